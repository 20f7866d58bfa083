"""Single-learner adversarial training (PGD-AT, TRADES, MART, or natural) on the same engine.

The reference point for Generalist at an equal budget: the same edge, attack, objectives,
schedules and plug-ins, with one learner that is the shipped model.
"""
from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Iterable, Optional, Union

from art_generalist import estimators
from art_generalist.core.attack import InputSpace
from art_generalist.core.learner import NO_OPTIMIZER, EpochStats, Learner, LearnerSpec
from art_generalist.core.mixing import ModelEMA, WeightMixer
from art_generalist.core.objectives import Objective, resolve_objective
from art_generalist.core.options import describe
from art_generalist.core.schedules import OFFICIAL_ITERATIONS, OFFICIAL_LR, Schedule, fractional_epoch, resolve_schedule
from art_generalist.methods.generalist import EMAOptions
from art_generalist.train.feed import Batch, sharded_attack
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
    :param ema_decay: weight averaging, the control Generalist's global learner calls for:
        ``None`` (default) ships the trained model itself; ``"auto"`` (budget-relative, as
        Generalist's) or a decay in [0, 1] ships an EMA of the learner's weights, BatchNorm buffers
        included (Generalist's EMA exactly: warm-up ``min(d, (t+1)/(t+k))`` with ``ema_warmup``).
        The classifier passed in then holds the average (``get_classifier()``); the learner trains
        a copy with a clone of its optimizer (:attr:`learner_classifier`).
    Other arguments as :class:`~art_generalist.train.trainer.TensorTrainer` (``plugins``,
    ``sparsity``, the PGD budget and the runtime options).
    """

    _legacy_state_names = ("AdversarialTrainerTensor",)

    def __init__(self, classifier: "PyTorchClassifier", objective: Union[str, Objective] = "pgd",
                 lr_schedule: Union[None, str, Schedule, tuple] = None,
                 per_iteration_schedules: bool = False, ema_decay: Union[None, float, str] = None,
                 ema_warmup: bool = True, **kwargs: Any) -> None:
        super().__init__(classifier, **kwargs)
        self.per_iteration_schedules = bool(per_iteration_schedules)
        self.objective = resolve_objective(objective, classifier.loss)
        self.name = type(self.objective).__name__
        clf = self.get_classifier()
        if clf.optimizer is None:
            raise ValueError(NO_OPTIMIZER)
        self.ema = None if ema_decay is None else EMAOptions(decay=ema_decay, warmup=ema_warmup)
        self.average: Optional[ModelEMA] = None
        space = self.global_space
        if self.ema is not None:  # the user's model becomes the average; the learner trains a copy
            self.average = ModelEMA(self.global_space.model, self.ema.resolve(OFFICIAL_ITERATIONS)[0],
                                    self.ema.warmup, WeightMixer(mix_buffers=True), copy=False)
            clf = estimators.trained_copy(clf, self.global_space.model, self.plugins.trainable_for("global"))
            space = self.space(clf.model)
        attack = (sharded_attack(space, self.norm, self.eps, self.eps_step, self.max_iter, self.objective.attack_loss)
                  if self.objective.attack_loss is not None else None)
        self.learner = Learner(LearnerSpec(self.objective.name, self.objective), clf, space,
                               self.objective, attack, self.average,
                               None if lr_schedule is None else resolve_schedule(lr_schedule, "lr_schedule",
                                                                                 OFFICIAL_LR), self.plugins)
        self.learner.from_classifier_optimizer = True

    def _state_name(self) -> str:
        return "SingleLearnerTrainer"

    @property
    def learner_classifier(self) -> "PyTorchClassifier":
        """The ART classifier of the trained (not averaged) model; with ``ema_decay=None`` it is
        :meth:`get_classifier` itself."""
        return self.learner.classifier

    def settings(self) -> dict:
        out = {**super().settings(), "objective": repr(self.objective), "lr_schedule": describe(self.learner.schedule),
               "per_iteration_schedules": self.per_iteration_schedules}
        if self.ema is not None:  # (absent without averaging: earlier checkpoints still compare equal)
            out.update(self.ema.settings())
        return out

    def _model_state(self) -> dict:
        state = {"global": self.global_space.model.state_dict(), "optimizer": self.learner.optimizer.state_dict(),
                 "base_lrs": list(self.learner.base_lrs)}
        if self.average is not None:
            state.update(learner=self.learner.model.state_dict(), ema_updates=self.average.num_updates)
        return state

    def _load_model_state(self, state: dict) -> None:
        self.global_space.model.load_state_dict(state["global"])
        self.learner.optimizer.load_state_dict(state["optimizer"])
        self.learner.base_lrs = list(state["base_lrs"])
        if self.average is not None:
            self.learner.model.load_state_dict(state["learner"])
            self.average.num_updates = int(state["ema_updates"])

    def _learners(self) -> list[Learner]:
        return [self.learner]

    def _models(self) -> dict[str, InputSpace]:
        if self.average is None:
            return {"global": self.global_space}
        return {"global": self.global_space, "learner": self.learner.space}

    def _begin_fit(self, nb_epochs: int, nb_batches: int) -> None:
        if self.average is not None:
            self.average.decay, self.average.warmup_k = self.ema.resolve(nb_epochs * nb_batches)

    def _train_epoch(self, epoch: int, nb_epochs: int, batches: Iterable[Batch], nb_batches: int) -> dict:
        self.learner.set_lr(self.learner.scheduled_lr(epoch, nb_epochs))
        stats = EpochStats([self.learner], self.device)
        for u, y in batches:
            if self.per_iteration_schedules:  # same fractional epoch as Generalist's engine
                self.learner.set_lr(self.learner.scheduled_lr(fractional_epoch(epoch, stats.steps, nb_batches),
                                                              nb_epochs))
            stats.add(0, *self.learner.step(u, y), len(y))  # the step updates the average (its teacher)
            stats.end_step(len(y))
        return stats.record(epoch)


class AdversarialTrainerTensor(SingleLearnerTrainer):
    """Deprecated name of :class:`SingleLearnerTrainer` (same behaviour, same checkpoints)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        warnings.warn("AdversarialTrainerTensor is deprecated; use art_generalist.SingleLearnerTrainer.",
                      DeprecationWarning, stacklevel=3)
        super().__init__(*args, **kwargs)
