"""Equal-budget benchmarks of Generalist against ART's own adversarial trainers."""
from art_generalist.benchmark.art_baselines import WORKAROUNDS, ARTTrainerRun

__all__ = ["ARTTrainerRun", "WORKAROUNDS"]
