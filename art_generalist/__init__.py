"""art-generalist: Generalist adversarial training as a drop-in ART trainer.

The package is laid out along the data flow, each room importing only the rooms below it:
:mod:`~art_generalist.core` (tensors: attacks, objectives, learners, mixing, schedules) and
:mod:`~art_generalist.parallel` (ranks), :mod:`~art_generalist.state` (files), then
:mod:`~art_generalist.train` (the loop, plug-ins, checkpoints, options), the plug-ins of
:mod:`~art_generalist.sparse` and :mod:`~art_generalist.evaluation`, the methods of
:mod:`~art_generalist.methods` (Generalist: :mod:`art_generalist.methods.generalist`),
:mod:`~art_generalist.transfer`, :mod:`~art_generalist.benchmark` and the command line.
"""
from art_generalist._version import __version__
from art_generalist.core.attack import ThreatModel, TrainingAttack
from art_generalist.core.learner import LearnerSpec
from art_generalist.core.mixing import ModelEMA, WeightMixer
from art_generalist.core.objectives import MART, TRADES, AdversarialCE, NaturalCE, Objective
from art_generalist.core.schedules import PiecewiseLinear, distribution_epochs, ema_decay
from art_generalist.evaluation import EvaluationReport, evaluate
from art_generalist.methods import AdversarialTrainerTensor, GeneralistTrainer, SingleLearnerTrainer
from art_generalist.methods.generalist import GeneralistConfig
from art_generalist.state import load_exported
from art_generalist.train.options import PGDBudget, RuntimeOptions
from art_generalist.train.plugins import Plugin

__all__ = [
    "__version__",
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
