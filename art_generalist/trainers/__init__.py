"""The package's trainers: the shared base (contract, loop, ART edge), Generalist, and the
single-learner reference (PGD-AT, TRADES, MART)."""
from art_generalist.trainers.base import TensorTrainer
from art_generalist.trainers.generalist import GeneralistTrainer
from art_generalist.trainers.single import AdversarialTrainerTensor, SingleLearnerTrainer

__all__ = ["TensorTrainer", "GeneralistTrainer", "SingleLearnerTrainer", "AdversarialTrainerTensor"]
