"""Training methods: Generalist (:mod:`.generalist`) and the single-learner reference PGD-AT,
TRADES and MART (:mod:`.single`), each an ART trainer on the loop of :mod:`art_generalist.train`."""
from art_generalist.methods.generalist import GeneralistTrainer
from art_generalist.methods.single import AdversarialTrainerTensor, SingleLearnerTrainer

__all__ = ["GeneralistTrainer", "SingleLearnerTrainer", "AdversarialTrainerTensor"]
