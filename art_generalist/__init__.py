"""art-generalist: Generalist adversarial training as a drop-in ART trainer.

Data flows one way: arrays -> trainer (:mod:`art_generalist.trainers`, checked once, tensors on the
device) -> engine (:mod:`art_generalist.generalist`) -> learners (:mod:`art_generalist.learners`)
-> EMA/mixer (:mod:`art_generalist.mixing`) -> ART classifier + evaluation report
(:mod:`art_generalist.evaluation`). Options live in :mod:`art_generalist.config`, plug-ins attach
at the hooks of :mod:`art_generalist.plugins`, and state on disk is :mod:`art_generalist.state`.
Sparse adversarial training (Flying Bird, Flying Bird+, Robust Bird) plugs into every trainer
through ``sparsity=`` with the classes of :mod:`art_generalist.sparse`.
"""
from art_generalist import _legacy
from art_generalist.attacks import ThreatModel, TrainingAttack
from art_generalist.config import GeneralistConfig, PGDBudget, RuntimeOptions
from art_generalist.evaluation import EvaluationReport, evaluate
from art_generalist.learners import LearnerSpec
from art_generalist.mixing import ModelEMA, WeightMixer
from art_generalist.objectives import MART, TRADES, AdversarialCE, NaturalCE, Objective
from art_generalist.plugins import Plugin
from art_generalist.schedules import PiecewiseLinear, distribution_epochs, ema_decay
from art_generalist.state import load_exported
from art_generalist.trainers import AdversarialTrainerTensor, GeneralistTrainer, SingleLearnerTrainer

_legacy.install()

__version__ = "0.2.0"

__all__ = [
    "GeneralistTrainer",
    "SingleLearnerTrainer",
    "AdversarialTrainerTensor",
    "GeneralistConfig",
    "PGDBudget",
    "RuntimeOptions",
    "Plugin",
    "evaluate",
    "EvaluationReport",
    "load_exported",
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
