"""Equal-budget benchmarks of Generalist against ART's own adversarial trainers: the runner that
gives ART's trainers a fair run (:mod:`.art_runner`) and the one-command benchmark (:mod:`.run`)."""
from art_generalist.benchmark.art_runner import WORKAROUNDS, ARTTrainerRun

__all__ = ["ARTTrainerRun", "WORKAROUNDS"]
