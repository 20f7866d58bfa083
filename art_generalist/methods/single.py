"""Single-learner adversarial training (PGD-AT, TRADES, MART, or natural) on the same engine.

The reference point for Generalist at an equal budget: the same edge, attack, objectives,
schedules and plug-ins, with one learner that is the shipped model.
"""
from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Iterable, Union

from art_generalist.core.attack import TrainingAttack
from art_generalist.core.learner import EpochStats, Learner, LearnerSpec
from art_generalist.core.objectives import Objective, resolve_objective
from art_generalist.core.options import describe
from art_generalist.core.schedules import OFFICIAL_LR, Schedule, fractional_epoch, resolve_schedule
from art_generalist.parallel import draws
from art_generalist.train.feed import Batch
from art_generalist.train.trainer import TensorTrainer

if TYPE_CHECKING:  # pragma: no cover
    from art.estimators.classification import PyTorchClassifier


class SingleLearnerTrainer(TensorTrainer):
    """Madry PGD-AT (``objective="pgd"``), TRADES, MART or natural training of one model.

    :param classifier: the user's ART ``PyTorchClassifier``, trained in place with its own optimizer
        as ART's trainers do (``copy_classifier=True`` trains a copy with a clone of the optimizer).
    :param objective: ``"pgd"``, ``"trades"``, ``"mart"``, ``"natural"`` or an Objective.
    :param lr_schedule: ``None`` (default: the optimizer's lr as the user set it, changed only by
        a ``fit(scheduler=...)``), ``"official"`` (Generalist's piecewise-linear decay of the
        optimizer's initial lr), ``"multistep"``, ``"constant"`` or a callable.
    :param per_iteration_schedules: evaluate the lr schedule at fractional epochs (after each
        iteration) instead of once per epoch, as :class:`~art_generalist.GeneralistTrainer` can.
    Other arguments as :class:`~art_generalist.train.trainer.TensorTrainer` (``plugins``,
    ``sparsity``, the PGD budget and the runtime options).
    """

    _legacy_state_names = ("AdversarialTrainerTensor",)

    def __init__(self, classifier: "PyTorchClassifier", objective: Union[str, Objective] = "pgd",
                 lr_schedule: Union[None, str, Schedule, tuple] = None,
                 per_iteration_schedules: bool = False, **kwargs: Any) -> None:
        super().__init__(classifier, **kwargs)
        self.per_iteration_schedules = bool(per_iteration_schedules)
        self.objective = resolve_objective(objective, classifier.loss)
        self.name = type(self.objective).__name__
        clf = self.get_classifier()
        if clf.optimizer is None:
            raise ValueError("The classifier needs an optimizer to be trained.")
        attack = (TrainingAttack(self.global_space, self.norm, self.eps, self.eps_step, self.max_iter,
                                 loss=self.objective.attack_loss, draws=draws.sharded)
                  if self.objective.attack_loss is not None else None)
        self.learner = Learner(LearnerSpec(self.objective.name, self.objective), clf, self.global_space,
                               self.objective, attack, None,
                               None if lr_schedule is None else resolve_schedule(lr_schedule, "lr_schedule",
                                                                                 OFFICIAL_LR), self.plugins)
        self.learner.from_classifier_optimizer = True

    def _state_name(self) -> str:
        return "SingleLearnerTrainer"

    def settings(self) -> dict:
        return {**super().settings(), "objective": repr(self.objective), "lr_schedule": describe(self.learner.schedule),
                "per_iteration_schedules": self.per_iteration_schedules}

    def _model_state(self) -> dict:
        return {"global": self.global_space.model.state_dict(), "optimizer": self.learner.optimizer.state_dict(),
                "base_lrs": list(self.learner.base_lrs)}

    def _load_model_state(self, state: dict) -> None:
        self.global_space.model.load_state_dict(state["global"])
        self.learner.optimizer.load_state_dict(state["optimizer"])
        self.learner.base_lrs = list(state["base_lrs"])

    def _learners(self) -> list[Learner]:
        return [self.learner]

    def _train_epoch(self, epoch: int, nb_epochs: int, batches: Iterable[Batch], nb_batches: int) -> dict:
        self.learner.set_lr(self.learner.scheduled_lr(epoch, nb_epochs))
        stats = EpochStats([self.learner], self.device)
        for u, y in batches:
            if self.per_iteration_schedules:  # same fractional epoch as Generalist's engine
                self.learner.set_lr(self.learner.scheduled_lr(fractional_epoch(epoch, stats.steps, nb_batches),
                                                              nb_epochs))
            stats.add(0, *self.learner.step(u, y), len(y))
            stats.end_step(len(y))
        return stats.record(epoch)


class AdversarialTrainerTensor(SingleLearnerTrainer):
    """Deprecated name of :class:`SingleLearnerTrainer` (same behaviour, same checkpoints)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        warnings.warn("AdversarialTrainerTensor is deprecated; use art_generalist.SingleLearnerTrainer.",
                      DeprecationWarning, stacklevel=3)
        super().__init__(*args, **kwargs)
