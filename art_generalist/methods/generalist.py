"""The Generalist algorithm (Wang & Wang, "Generalist: Decoupling Natural and Robust
Generalization", CVPR 2023), as the official code (PKU-ML/Generalist ``main.py``) runs it.

Per minibatch (x, y):

1. each robust base learner θ_R makes PGD examples against itself (eval mode) and takes one
   optimizer step on them; its EMA teacher T_R follows;
2. each natural base learner θ_N takes one step on the clean batch; its teacher T_N follows;
3. the global learner mixes the teachers: G <- d·G + (1-d)·(β·T_R + (1-β)·T_N);
4. during distribution windows (from t' on, every c epochs, one epoch long in the official
   run) G is copied back into every base learner after each iteration (optimizer state kept).

β(e) is piecewise linear over the epoch budget, (0, E/3, 2E/3, E) -> (1, 1, 1, 0.4). Every EMA
uses the decay ``min(0.999, (t+1)/(t+10))``. The global learner G is the model users ship.
This module is tensor-native: batches arrive as unit-range tensors on the model's device.

This module reads top to bottom: the options (official defaults first), the algorithm
(:class:`Generalist`, one epoch of steps 1-4), and the ART trainer that builds the base learners,
their teachers and the global learner from the user's classifier (:class:`GeneralistTrainer`;
the ART edge, the loop and checkpoints are :class:`~art_generalist.train.trainer.TensorTrainer`).
"""

from __future__ import annotations

import logging
import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional, Sequence, Union

import torch

from art_generalist import estimators
from art_generalist.core.attack import InputSpace
from art_generalist.core.learner import NO_OPTIMIZER, EpochStats, Learner, LearnerSpec
from art_generalist.core.mixing import ModelEMA, WeightMixer
from art_generalist.core.objectives import resolve_objective
from art_generalist.core.options import Options, describe, group, option
from art_generalist.core.schedules import (
    OFFICIAL_BETA,
    OFFICIAL_ITERATIONS,
    OFFICIAL_LR,
    DistributionSchedule,
    Schedule,
    budget_relative_ema,
    fractional_epoch,
    resolve_schedule,
)
from art_generalist.sparse.plugin import SparsityPlugin
from art_generalist.train.feed import Batch, sharded_attack
from art_generalist.train.options import BUDGET, PGDBudget, RuntimeOptions
from art_generalist.train.plugins import Plugin
from art_generalist.train.trainer import TensorTrainer

if TYPE_CHECKING:  # pragma: no cover
    from art.estimators.classification import PyTorchClassifier

logger = logging.getLogger(__name__)


# -- the options (official defaults first) ----------------------------------------------------------
@dataclass(frozen=True)
class EMAOptions(Options):
    """The EMA of every teacher and of the global learner."""

    decay: Union[float, str] = option(
        "auto", "ema_decay", 'decay of every EMA (teachers and global learner), counted in iterations; `"auto"`: '
        "budget-relative, the official run's horizon (2.1% of the run) and warm-up end (19%) kept as fractions of "
        "the N iterations of `fit` (d = 1 − 46.9/N; 0.999 at the official 46,920); a float: that decay "
        "(0.999 is the official code's); measurements in BENCHMARKS.md",
        '`"auto"`')
    warmup: bool = option(True, "ema_warmup", "every EMA uses `min(decay, (t+1)/(t+k))`, k = 10 (or budget-relative "
                          'with `"auto"`)')

    def __post_init__(self) -> None:
        if self.decay == "auto":
            return
        if isinstance(self.decay, bool) or not isinstance(self.decay, numbers.Real) or not 0.0 <= self.decay <= 1.0:
            raise ValueError(f"`ema_decay` must lie in [0, 1] or be 'auto', got {self.decay!r}.")

    def resolve(self, nb_iterations: int) -> tuple[float, float]:
        """``(decay, warm-up k)`` for a run of ``nb_iterations`` optimizer steps."""
        return budget_relative_ema(nb_iterations) if self.decay == "auto" else (float(self.decay), 10.0)


@dataclass(frozen=True)
class MixingOptions(Options):
    """How the teachers are mixed into the global learner."""

    beta_schedule: Union[str, Schedule, tuple] = option(
        "official", "beta_schedule", "β: (0, E/3, 2E/3, E) → (1, 1, 1, 0.4); or `(knots, values)` or a callable "
        "`(epoch, E) -> β`", '`"official"`')
    mix_weights: Optional[Callable] = option(None, "mix_weights", "callable `(epoch, E) -> weights`, one per "
                                             "learner (replaces the β rule)")
    mix_buffers: bool = option(True, "mix_buffers", "BatchNorm statistics are EMA'd and mixed like weights "
                               "(official) or copied")

    def __post_init__(self) -> None:
        if isinstance(self.beta_schedule, (tuple, list)) and len(self.beta_schedule) == 2:
            bad = [v for v in self.beta_schedule[1] if not 0.0 <= float(v) <= 1.0]
            if bad:
                raise ValueError(f"`beta_schedule` values must lie in [0, 1], got {list(self.beta_schedule[1])}.")
        self.beta()  # raises on malformed schedules
        if self.mix_weights is not None and not callable(self.mix_weights):
            raise ValueError(f"`mix_weights` must be a callable (epoch, nb_epochs) -> weights, "
                             f"got {self.mix_weights!r}.")

    def beta(self) -> Schedule:
        return resolve_schedule(self.beta_schedule, "beta_schedule", OFFICIAL_BETA)


@dataclass(frozen=True)
class DistributionOptions(Options):
    """When the global learner is copied back into the base learners."""

    start: Union[int, float] = option(0.625, "distribute_start", "t′, the end of the first distribution window; "
                                      "floats are fractions of the budget, ints are epochs")
    every: Union[int, float] = option(1 / 24, "distribute_every", "c, the spacing of the windows", "1/24")
    length: Union[int, float] = option(1 / 120, "distribute_length", "the length of a window", "1/120")
    per_iteration: bool = option(True, "distribute_per_iteration", "copy G into the learners after every "
                                 "iteration of a window (official) or once at its end")

    def __post_init__(self) -> None:
        self.schedule()  # validates t', c and the length

    def schedule(self) -> DistributionSchedule:
        return DistributionSchedule(self.start, self.every, self.length)


@dataclass(frozen=True)
class ScheduleOptions(Options):
    """Learning rates and when schedules are read."""

    lr_schedule: Union[None, str, Schedule, tuple] = option(
        "official", "lr_schedule", "(0, E/3, 2E/3, E) → (1, 1, 0.1, 0.01) × lr; `\"multistep\"`: ×0.1 after E/2 "
        "and 3E/4; `None`: constant; or a callable",
        '`"official"`')
    shared_lr: bool = option(True, "shared_lr", "every learner follows the first learner's lr (the official code "
                             "overwrites the natural lr)")
    per_iteration: bool = option(False, "per_iteration_schedules", "β and lr at fractional epochs (TMLlib) "
                                 "instead of once per epoch (official)")

    def __post_init__(self) -> None:
        self.lr()

    def lr(self) -> Schedule:
        return resolve_schedule(self.lr_schedule, "lr_schedule", OFFICIAL_LR)


@dataclass(frozen=True)
class GeneralistConfig(Options):
    """Every Generalist option, grouped; build it with keywords or :meth:`from_options`.

    ``GeneralistConfig.from_options(ema_decay=0.9, beta_schedule="official")`` and
    ``GeneralistTrainer(classifier, ema_decay=0.9)`` are the same configuration.
    """

    learners: Optional[Sequence[Any]] = option(
        None, "learners", "list of `LearnerSpec(name, objective, norm, eps, eps_step, max_iter, optimizer, "
        "lr_schedule, classifier)`; W >= 2 experts, e.g. natural + L∞ + L2 (Generalist++)", "robust PGD + natural")
    sync_init: bool = option(True, "sync_init", "all learners start from the classifier's weights (official: "
                             "identical initialisation)")
    ema: EMAOptions = group(EMAOptions)
    mixing: MixingOptions = group(MixingOptions)
    distribution: DistributionOptions = group(DistributionOptions)
    schedules: ScheduleOptions = group(ScheduleOptions)

    def __post_init__(self) -> None:
        if self.learners is None:
            return
        from art_generalist.core.objectives import resolve_objective

        specs = list(self.learners)
        if len(specs) < 2:
            raise ValueError(f"`learners` must hold at least 2 LearnerSpec, got {len(specs)}.")
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"Learner names must be unique, got {names}.")
        for spec in specs:
            resolve_objective(spec.objective)  # raises on unknown names

    def settings(self) -> dict[str, Any]:
        out = super().settings()
        out.pop("learners")  # described by the trainer from the built learners
        return out


# -- the algorithm: one epoch of steps 1-4 --------------------------------------------------------
MixWeights = Callable[[float, int], Sequence[float]]


class Generalist:
    """The engine: base learners, their teachers, the global learner and the schedules.

    :param learners: the base learners, stepped in order each iteration (robust first, as
        the official code does).
    :param global_ema: the global learner G, an EMA over the mixture of the teachers.
    :param config: the :class:`GeneralistConfig` (β or mixing weights,
        distribution windows, learning-rate sharing, when schedules are read).
    """

    def __init__(self, learners: Sequence[Learner], global_ema: ModelEMA, config: "GeneralistConfig") -> None:
        if len(learners) < 2:
            raise ValueError(f"Generalist needs at least 2 base learners, got {len(learners)}.")
        self.learners, self.global_ema = list(learners), global_ema
        self.beta_schedule, self.mix_weights = config.mixing.beta(), config.mixing.mix_weights
        self.distribution = config.distribution.schedule()
        self.distribute_per_iteration = config.distribution.per_iteration
        self.shared_lr, self.per_iteration_schedules = config.schedules.shared_lr, config.schedules.per_iteration
        robust = [i for i, lrn in enumerate(self.learners) if lrn.spec.is_robust]
        natural = [i for i in range(len(self.learners)) if i not in robust]
        # β goes to the robust teachers and 1-β to the natural ones, each split evenly. With
        # experts of one kind only (e.g. L∞ + L2), β goes to the first and 1-β to the others.
        self._beta_group, self._rest_group = ((robust, natural) if robust and natural
                                              else ([0], list(range(1, len(learners)))))

    # -- schedules -------------------------------------------------------------------------
    def beta(self, epoch: float, nb_epochs: int) -> float:
        beta = float(self.beta_schedule(epoch, nb_epochs))
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"The β schedule returned {beta} at epoch {epoch}; β must lie in [0, 1].")
        return beta

    def weights(self, epoch: float, nb_epochs: int) -> list[float]:
        """Mixing weight of each learner's teacher at ``epoch``."""
        if self.mix_weights is not None:
            return [float(w) for w in self.mix_weights(epoch, nb_epochs)]
        beta, w = self.beta(epoch, nb_epochs), [0.0] * len(self.learners)
        for i in self._beta_group:
            w[i] = beta / len(self._beta_group)
        for i in self._rest_group:
            w[i] = (1.0 - beta) / len(self._rest_group)
        return w

    def learning_rates(self, epoch: float, nb_epochs: int) -> list[float]:
        lrs = [lrn.scheduled_lr(epoch, nb_epochs) for lrn in self.learners]
        return [lrs[0]] * len(lrs) if self.shared_lr else lrs

    # -- the algorithm ------------------------------------------------------------------------
    def distribute(self) -> None:
        """Copy the global learner into every base learner (weights and buffers)."""
        for learner in self.learners:
            self.global_ema.mixer.copy_(learner.model, self.global_ema.module)

    def train_epoch(self, epoch: int, nb_epochs: int, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                    nb_batches: int) -> dict:
        """One epoch (1-based ``epoch``) over ``batches`` of unit-range inputs and index labels."""
        windows = self.distribution.windows(nb_epochs)
        stats = EpochStats(self.learners, next(self.global_ema.module.parameters()).device)
        distributions, t = 0, float(epoch)
        for i, (u, y) in enumerate(batches):
            if self.per_iteration_schedules:
                t = fractional_epoch(epoch, i, nb_batches)
            if self.per_iteration_schedules or i == 0:
                for learner, lr in zip(self.learners, self.learning_rates(t, nb_epochs)):
                    learner.set_lr(lr)
                weights = self.weights(t, nb_epochs)
            for k, learner in enumerate(self.learners):           # steps 1-2
                stats.add(k, *learner.step(u, y), len(y))
            self.global_ema.update([lrn.teacher.module for lrn in self.learners], weights)  # step 3
            progress = (epoch - 1 + i / nb_batches, fractional_epoch(epoch, i, nb_batches))
            if self.distribution.active(windows, *progress, self.distribute_per_iteration):  # step 4
                self.distribute()
                distributions += 1
            stats.end_step(len(y))
        record = stats.record(epoch)
        return {"epoch": epoch, "beta": self.beta(t, nb_epochs) if self.mix_weights is None else None,
                "mix_weights": weights, "ema_decay": self.global_ema.current_decay(), "distributions": distributions,
                "examples": record["examples"],
                "steps": record["steps"], "learners": record["learners"]}


# -- the ART trainer --------------------------------------------------------------------------------
class GeneralistTrainer(TensorTrainer):
    """Generalist (Wang & Wang, CVPR 2023, https://arxiv.org/abs/2303.13813) for ART.

    A natural and a robust base learner (deep copies of the classifier's model with their own
    optimizers) are trained side by side; their EMA teachers are mixed into a global learner
    that is copied back into the base learners after a warm-up. The global learner, returned by
    :meth:`get_classifier`, is the model to ship. Defaults follow the official code
    (PKU-ML/Generalist, see the README's "Faithfulness" section); as with every defence, judge
    it with a strong adaptive evaluation (Athalye et al., 2018; Carlini et al., 2019).

    :param classifier: the user's ART ``PyTorchClassifier``. As with ART's trainers it is trained in
        place: after ``fit`` its model is the global learner and :meth:`get_classifier` returns it
        (``copy_classifier=True`` trains a copy and leaves it untouched). Its loss, ``clip_values``,
        mean/std ``preprocessing``, ``processor``, postprocessing, ``nb_classes`` and device are
        used; the base learners' optimizers clone its optimizer's parameter groups.
    :param eps, eps_step, max_iter, norm: the training PGD budget in the classifier's input units
        (ART's names). ``eps > 1`` with clip values (0, 1) is refused (the 0-255 mix-up).
    :param config: a :class:`GeneralistConfig`; default: the official
        settings.
    :param plugins: :class:`~art_generalist.train.plugins.Plugin` instances (masks, frozen parameters,
        gradient reduction).
    :param sparsity: a sparse-training plug-in from :mod:`art_generalist.sparse` (``FlyingBird``,
        ``FlyingBirdPlus``, ``RobustBird``): one mask shared by the base learners, their teachers
        and the global learner, decided on the robust learner.
    :param options: Generalist options by their flat names (``ema_decay=0.9``,
        ``beta_schedule=...``; they override ``config``) and the runtime options
        (``val_max_iter``, ``augment``, ``amp``, ``channels_last``, ``verbose``). The README's
        knob table lists every one with its default and meaning.
    """

    name = "Generalist"

    def __init__(self, classifier: "PyTorchClassifier", eps: float = BUDGET.eps, eps_step: float = BUDGET.eps_step,
                 max_iter: int = BUDGET.max_iter, norm: Union[str, float] = BUDGET.norm,
                 config: Optional[GeneralistConfig] = None,
                 plugins: Optional[Sequence[Plugin]] = None, sparsity: Optional[SparsityPlugin] = None,
                 **options: Any) -> None:
        runtime = {k: options.pop(k) for k in RuntimeOptions.flat_names() if k in options}
        self.config = (config or GeneralistConfig()).replace(**options)
        self.specs = (list(self.config.learners) if self.config.learners is not None
                      else [LearnerSpec("robust", "pgd"), LearnerSpec("natural", "natural")])
        super().__init__(classifier, eps=eps, eps_step=eps_step, max_iter=max_iter, norm=norm, plugins=plugins,
                         sparsity=sparsity, **runtime)
        self.lr_schedule = self.config.schedules.lr()
        self.mixer = WeightMixer(mix_buffers=self.config.mixing.mix_buffers)
        decay, _ = self.config.ema.resolve(OFFICIAL_ITERATIONS)  # "auto" is set per run in _begin_fit
        self.global_ema = ModelEMA(self.global_space.model, decay, self.config.ema.warmup, self.mixer, copy=False)
        self.learners = [self._build_learner(spec, classifier) for spec in self.specs]
        self._engine: Optional[Generalist] = None

    # -- construction ---------------------------------------------------------------------
    def _build_learner(self, spec: LearnerSpec, template: "PyTorchClassifier") -> Learner:
        if spec.classifier is not None:
            clf = spec.classifier
        else:
            # the spec's optimizer, else the user's parameter groups (each with its own lr, decay)
            if spec.optimizer is None and template.optimizer is None:
                raise ValueError(f"{NO_OPTIMIZER} (Or give learner {spec.name!r} its own: "
                                 f"LearnerSpec(..., optimizer=art_generalist.core.learner.sgd(0.01))).")
            clf = estimators.trained_copy(template, self.global_ema.module, self.plugins.trainable_for(spec.name),
                                        spec.optimizer)
        if self.config.sync_init:
            self.mixer.copy_(clf.model, self.global_ema.module)  # also checks that the keys match
        objective = resolve_objective(spec.objective, template.loss)
        space = self.space(clf.model)
        attack = None
        if objective.attack_loss is not None:
            attack = sharded_attack(space, spec.norm if spec.norm is not None else self.norm,
                                    spec.eps if spec.eps is not None else self.eps,
                                    spec.eps_step if spec.eps_step is not None else self.eps_step,
                                    spec.max_iter if spec.max_iter is not None else self.max_iter,
                                    objective.attack_loss)
        schedule = (resolve_schedule(spec.lr_schedule, "lr_schedule", OFFICIAL_LR)
                    if spec.lr_schedule is not None else self.lr_schedule)
        teacher = ModelEMA(clf.model, self.global_ema.decay, self.config.ema.warmup, self.mixer)
        learner = Learner(spec, clf, space, objective, attack, teacher, schedule, self.plugins)
        learner.from_classifier_optimizer = (spec.classifier is None and spec.optimizer is None
                                             and template.optimizer is not None)
        return learner

    # -- access ---------------------------------------------------------------------------------
    @property
    def base_classifiers(self) -> dict[str, "PyTorchClassifier"]:
        """The base learners' ART classifiers by name."""
        return {lrn.name: lrn.classifier for lrn in self.learners}

    @property
    def teachers(self) -> dict[str, torch.nn.Module]:
        """The base learners' EMA teachers by name."""
        return {lrn.name: lrn.teacher.module for lrn in self.learners}

    @property
    def robust_classifier(self) -> "PyTorchClassifier":
        return next(lrn.classifier for lrn in self.learners if lrn.attack is not None)

    @property
    def natural_classifier(self) -> "PyTorchClassifier":
        return next(lrn.classifier for lrn in self.learners if lrn.attack is None)

    @property
    def distribution(self):
        """The distribution schedule (t', c, window length) of :attr:`config`."""
        return self.config.distribution.schedule()

    # -- state ---------------------------------------------------------------------------------------
    def settings(self) -> dict:
        learners = [{"name": lrn.name, "objective": repr(lrn.objective),
                     "attack": repr(lrn.attack) if lrn.attack is not None else None,
                     "optimizer": type(lrn.optimizer).__name__, "lr_schedule": describe(lrn.schedule)}
                    for lrn in self.learners]
        return {**super().settings(), **self.config.settings(), "learners": learners}

    def _model_state(self) -> dict:
        return {"global": self.global_ema.module.state_dict(), "global_updates": self.global_ema.num_updates,
                "learners": {lrn.name: {"model": lrn.model.state_dict(), "optimizer": lrn.optimizer.state_dict(),
                                        "base_lrs": list(lrn.base_lrs), "teacher": lrn.teacher.module.state_dict(),
                                        "teacher_updates": lrn.teacher.num_updates}
                             for lrn in self.learners}}

    def _load_model_state(self, state: dict) -> None:
        self.global_ema.module.load_state_dict(state["global"])
        self.global_ema.num_updates = int(state["global_updates"])
        for lrn in self.learners:
            saved = state["learners"][lrn.name]
            lrn.model.load_state_dict(saved["model"])
            lrn.optimizer.load_state_dict(saved["optimizer"])
            lrn.base_lrs = list(saved["base_lrs"])
            lrn.teacher.module.load_state_dict(saved["teacher"])
            lrn.teacher.num_updates = int(saved["teacher_updates"])

    # -- the loop ----------------------------------------------------------------------------------
    def engine(self, nb_epochs: int) -> Generalist:
        """The tensor-native engine configured for a budget of ``nb_epochs``."""
        self.distribution.windows(nb_epochs)  # validates t', c and the length for this budget
        return Generalist(self.learners, self.global_ema, self.config)

    def _begin_fit(self, nb_epochs: int, nb_batches: int) -> None:
        decay, warmup_k = self.config.ema.resolve(nb_epochs * nb_batches)
        for ema in [self.global_ema, *(lrn.teacher for lrn in self.learners)]:
            ema.decay, ema.warmup_k = decay, warmup_k
        self._engine = self.engine(nb_epochs)

    def _train_epoch(self, epoch: int, nb_epochs: int, batches: Iterable[Batch], nb_batches: int) -> dict:
        return self._engine.train_epoch(epoch, nb_epochs, batches, nb_batches)

    def _learners(self) -> list[Learner]:
        return list(self.learners)

    def _models(self) -> dict[str, InputSpace]:
        models = {"global": self.global_space, **{lrn.name: lrn.space for lrn in self.learners}}
        models.update({f"teacher:{lrn.name}": self.space(lrn.teacher.module) for lrn in self.learners})
        return models


def knob_table() -> str:
    """The README's "Every knob" table, generated from the option classes."""
    lines = ["| argument | default | meaning |", "|---|---|---|"]
    for cls in (PGDBudget, GeneralistConfig, RuntimeOptions):
        for name, default, doc in cls.rows():
            shown = default if default.startswith("`") or " " in default else f"`{default}`"
            lines.append(f"| `{name}` | {shown} | {doc} |")
    return "\n".join(lines)
