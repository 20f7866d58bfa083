"""art-generalist: Generalist adversarial training as a drop-in ART trainer.

The engine (objectives, training attack, weight mixing, schedules, the Generalist loop) is
tensor-native; :class:`GeneralistTrainer` is the thin ART adapter (numpy in, ART
``PyTorchClassifier`` out).
"""
from art_generalist.attacks import ThreatModel, TrainingAttack
from art_generalist.baselines import AdversarialTrainerTensor
from art_generalist.evaluation import EvaluationReport, evaluate
from art_generalist.learners import LearnerSpec
from art_generalist.mixing import ModelEMA, WeightMixer
from art_generalist.objectives import MART, TRADES, AdversarialCE, NaturalCE, Objective
from art_generalist.schedules import PiecewiseLinear, distribution_epochs, ema_decay
from art_generalist.trainer import GeneralistTrainer

__version__ = "0.1.0"

__all__ = [
    "GeneralistTrainer",
    "AdversarialTrainerTensor",
    "evaluate",
    "EvaluationReport",
    "LearnerSpec",
    "ModelEMA",
    "WeightMixer",
    "Objective",
    "NaturalCE",
    "AdversarialCE",
    "TRADES",
    "MART",
    "ThreatModel",
    "TrainingAttack",
    "PiecewiseLinear",
    "distribution_epochs",
    "ema_decay",
]
