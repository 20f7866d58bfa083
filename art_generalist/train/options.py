"""Every option of the package's trainers, declared once (in the style of MadryLab's
``robustness/defaults.py``): a frozen dataclass per option group, one field per option, each with
its flat name (the keyword users pass), its default and its documentation (see
:mod:`art_generalist.core.options` for the machinery).

The trainers' keywords, :meth:`settings`, the CLI's ``--generalist-args`` and the README's knob
table (:func:`knob_table`) all come from these classes; a test checks that the README agrees.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

from art_generalist.core.attack import ThreatModel
from art_generalist.core.options import Options, check_int, group, option
from art_generalist.core.schedules import (
    OFFICIAL_BETA,
    OFFICIAL_LR,
    DistributionSchedule,
    Schedule,
    budget_relative_ema,
    resolve_schedule,
)


# -- the PGD budget (ART's flat names) ------------------------------------------------------------
@dataclass(frozen=True)
class PGDBudget(Options):
    """The training attack's budget, in the classifier's input units."""

    eps: float = option(8 / 255, "eps", "training PGD radius in the classifier's input units (ART's name)",
                        "8/255")
    eps_step: float = option(2 / 255, "eps_step", "training PGD step size", "2/255")
    max_iter: int = option(10, "max_iter", "training PGD steps")
    norm: Union[str, float] = option("inf", "norm", '`"inf"` (L∞) or `2` (L2)', '`"inf"`')

    def __post_init__(self) -> None:
        for name in ("eps", "eps_step"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"`{name}` must be a positive number, got {value!r}.")
        check_int(self.max_iter, "max_iter", 1)
        ThreatModel.parse(self.norm)

    def check_range(self, clip_values: tuple[float, float]) -> None:
        """Refuse an ε wider than the input range (the 0-255 mix-up)."""
        check_eps_range(self.eps, clip_values)


def check_eps_range(eps: float, clip_values: tuple[float, float]) -> None:
    """ε must fit the classifier's clip range (``eps=8`` for (0, 1) images is the 0-255 mix-up)."""
    lo, hi = clip_values
    if (lo, hi) == (0.0, 1.0) and eps > 1:
        raise ValueError(f"`eps`={eps} exceeds the (0, 1) input range: eps is in input units "
                         f"(for 8/255 on [0, 1] images pass eps=8/255, not 8).")
    if eps > hi - lo:
        raise ValueError(f"`eps`={eps} exceeds the clip range width {hi - lo:g}.")


# -- runtime options shared by every trainer ------------------------------------------------------
@dataclass(frozen=True)
class RuntimeOptions(Options):
    """How a trainer runs; none of these changes the algorithm."""

    val_max_iter: int = option(20, "val_max_iter", "steps of the validation PGD (step 2.5·eps/steps); 0 for clean only")
    augment: Optional[Callable] = option(None, "augment", "tensor-native augmentation of unit-range batches, e.g. "
                                         "`art_generalist.core.augment.random_crop_flip` for CIFAR")
    amp: bool = option(False, "amp", "bf16 autocast")
    channels_last: Union[bool, str] = option(
        "auto", "channels_last", 'channels_last memory format for the models and their 4-D inputs; `"auto"` turns '
        "it on for image classifiers (same arithmetic, faster convolutions and pooling on CPU)", '`"auto"`')
    verbose: bool = option(True, "verbose", "tqdm bars per epoch and per batch")
    copy_classifier: bool = option(
        False, "copy_classifier", "train a copy and leave the user's classifier untouched (`get_classifier()` is "
        "then a new classifier); by default the classifier passed in is trained in place, as ART's trainers do")
    sync_batchnorm: bool = option(
        False, "sync_batchnorm", "under torch.distributed on CUDA: BatchNorm statistics of the training forward "
        "passes over the global batch (torch's SyncBatchNorm) instead of each rank's slice")

    def __post_init__(self) -> None:
        check_int(self.val_max_iter, "val_max_iter", 0)
        if not isinstance(self.copy_classifier, bool):
            raise ValueError(f"`copy_classifier` must be True or False, got {self.copy_classifier!r}.")
        if not isinstance(self.sync_batchnorm, bool):
            raise ValueError(f"`sync_batchnorm` must be True or False, got {self.sync_batchnorm!r}.")
        if self.channels_last != "auto" and not isinstance(self.channels_last, bool):
            raise ValueError(f"`channels_last` must be True, False or 'auto', got {self.channels_last!r}.")

    def use_channels_last(self, input_shape: Sequence[int], channels_first: bool = True) -> bool:
        """``"auto"``: channels_last for image inputs (``input_shape`` of rank 3, channels first)."""
        if self.channels_last == "auto":
            return len(tuple(input_shape)) == 3 and bool(channels_first)
        return bool(self.channels_last)


# -- Generalist ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EMAOptions(Options):
    """The EMA of every teacher and of the global learner."""

    decay: Union[float, str] = option(
        "auto", "ema_decay", 'decay of every EMA (teachers and global learner), counted in iterations; `"auto"`: '
        "budget-relative, the official run's horizon (2.1% of the run) and warm-up end (19%) kept as fractions of "
        "the N iterations of `fit` (d = 1 − 46.9/N; 0.999 at the official 46,920); a float: that decay "
        "(0.999 is the official code's); measured better than 0.999 at short budgets (BENCHMARKS.md §6)",
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


def knob_table() -> str:
    """The README's "Every knob" table, generated from the option classes."""
    lines = ["| argument | default | meaning |", "|---|---|---|"]
    for cls in (PGDBudget, GeneralistConfig, RuntimeOptions):
        for name, default, doc in cls.rows():
            shown = default if default.startswith("`") or " " in default else f"`{default}`"
            lines.append(f"| `{name}` | {shown} | {doc} |")
    return "\n".join(lines)
