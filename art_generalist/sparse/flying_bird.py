"""Flying Bird and Flying Bird+ (Chen et al., "Sparsity Winning Twice", ICLR 2022): dynamic
sparse adversarial training, as plug-ins for every trainer of the package.

**Flying Bird.** Sparse from the first iteration: random masks with per-layer densities from IGQ
(default), ERK or uniform, over every Conv2d and Linear weight (first and last layers included).
Every ``update_every`` training iterations the topology changes, per layer: the ``ceil(r_t * nnz)``
smallest-magnitude active weights are pruned and as many inactive ones regrown, at random (SET,
the official default) or by largest gradient magnitude (RigL), so each layer keeps its density.
``r_t`` decays from ``death_rate`` to ``final_death_rate`` by a cosine over the iteration budget.
Defaults follow the released code (``scripts/fb.sh``: ``--dynamic_fre``): an update every 900
iterations of 200 epochs x 352 iterations = 70,400, and every 1,200 (``later_factor`` 4/3 of
it) after half the run. Here the interval is a fraction of the budget (900 / 70,400, about
1.28 %), so a shorter run updates as often relative to its length; an integer gives iterations.

The topology is decided on the primary learner (the robust learner of Generalist, the only learner
otherwise) from its weights and last gradient, and applied to every model; iterations count once
per training iteration. The official code counts its iterations in a global that runs on across
epochs; so does this one, within a run.

**Flying Bird+.** Flying Bird plus, in the epochs after ``dynamic_epoch`` (half the budget, the
official 100 of 200), at each topology update:

* *extra prune*: when at least ``update_threshold`` of the last ``epoch_range`` epoch-to-epoch
  changes of the robust generalization gap (training adversarial accuracy of the primary learner
  minus ``val_pgd_acc``) are positive, ``ceil(r_t * prune_ratio * nnz)`` more weights are pruned,
  so the density drops;
* *extra grow*: when at least ``update_threshold`` of the last ``epoch_range`` changes of the
  validation PGD loss (``val_pgd_loss``) are >= 0, ``(1 + growth_ratio)`` times the pruned count
  is regrown.

It needs ``validation_data`` with PGD (``val_max_iter >= 1``). Bugs of the release fixed here: the
first mask update crashes on an undefined ``args.dynamic_sparse`` (here Flying Bird never adapts
and Flying Bird+ always does), and counts are exact (see :mod:`~art_generalist.sparse.topology`).

Unstructured sparsity saves FLOPs, not wall-clock time on dense kernels (see
:mod:`~art_generalist.sparse.report`).
"""
from __future__ import annotations

import logging
import math
from numbers import Real
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Union

from torch import nn

from art_generalist.sparse.densities import METHODS, layer_densities
from art_generalist.sparse.masks import Masks
from art_generalist.sparse.plugin import SparsityPlugin
from art_generalist.sparse.topology import GROWTH, cosine_death_rate, gap_trend, loss_trend, update_topology
from art_generalist.train.plugins import Batch

if TYPE_CHECKING:  # pragma: no cover
    from art_generalist.core.learner import Learner

logger = logging.getLogger(__name__)

#: The official budget: 200 epochs of 352 iterations (45,000 CIFAR images in batches of 128).
OFFICIAL_ITERATIONS = 200 * 352
Interval = Union[int, float]
#: Initial scaling of the kept weights: the official code keeps the dense values.
INIT_SCALES = ("auto", "none", "fan_in")
NORMALISATION = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def _interval(value: Interval, name: str, total: int) -> int:
    """Iterations between updates: an int >= 1, or a float in (0, 1) times ``total`` (at least 1)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    if isinstance(value, float) and 0.0 < value < 1.0:
        return max(1, round(value * total))
    raise ValueError(f"`{name}` must be an integer >= 1 (iterations) or a float in (0, 1) (a fraction of the "
                     f"iteration budget), got {value!r}.")


def _epoch_point(value: Interval, name: str, nb_epochs: int) -> int:
    """An epoch: an int >= 0, or a float in [0, 1] times ``nb_epochs``."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, float) and 0.0 <= value <= 1.0:
        return round(value * nb_epochs)
    raise ValueError(f"`{name}` must be an integer >= 0 (an epoch) or a float in [0, 1] (a fraction of the "
                     f"epochs), got {value!r}.")


def _rate(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"`{name}` must be a number in [0, 1], got {value!r}.")
    return float(value)


class FlyingBird(SparsityPlugin):
    """Flying Bird: dynamic sparse adversarial training (see the module docstring).

    :param density: global fraction of the Conv2d/Linear weights kept, in (0, 1] (0.2 = 80 % sparse).
    :param init: per-layer densities of the initial random masks: ``"igq"`` (official), ``"erk"``
        or ``"uniform"``.
    :param update_every: iterations between topology updates (int), or a fraction of the iteration
        budget (float; default 900 / 70,400 as the official run).
    :param later_factor: the interval in the epochs after ``dynamic_epoch`` is ``update_every``
        times this, rounded (official 1,200 / 900 = 4/3, ``--dynamic_fre``); 1 keeps one interval.
    :param dynamic_epoch: an epoch (int) or a fraction of the epochs (float, default 0.5): the
        later interval, and Flying Bird+'s adaptive rules, apply in the epochs after it.
    :param death_rate, final_death_rate: the prune fraction, cosine-decayed over the budget.
    :param growth: ``"random"`` (official) or ``"gradient"`` (RigL).
    :param seed: seed of the plug-in's generator (initial masks, random growth).
    :param init_scale: ``"none"`` (official) keeps the dense initial values of the kept weights;
        ``"fan_in"`` scales each unit's kept weights by ``sqrt(fan_in / kept fan_in)`` when the
        initial masks are drawn, restoring the dense initialisation's activation scale (see
        :meth:`~art_generalist.sparse.masks.Masks.rescale_fan_in_`); ``"auto"`` (default) is
        ``"fan_in"`` for a model without normalisation layers and ``"none"`` otherwise. Without
        normalisation a sparse start shrinks every layer's output; BatchNorm restores the scale by
        itself, which is why the official ResNets need no rescale (measurements: BENCHMARKS.md).
    """

    method = "Flying Bird"

    def __init__(self, density: float = 0.2, init: str = "igq", update_every: Interval = 900 / OFFICIAL_ITERATIONS,
                 later_factor: float = 4 / 3, dynamic_epoch: Interval = 0.5,
                 death_rate: float = 0.5, final_death_rate: float = 0.005, growth: str = "random",
                 seed: int = 0, init_scale: str = "auto") -> None:
        super().__init__(density, seed)
        if init_scale not in INIT_SCALES:
            raise ValueError(f"`init_scale` must be one of {list(INIT_SCALES)}, got {init_scale!r}.")
        self.init_scale = self._init_scale = init_scale  # the second: resolved at setup
        if init not in METHODS:
            raise ValueError(f"`init` must be one of {sorted(METHODS)}, got {init!r}.")
        if growth not in GROWTH:
            raise ValueError(f"`growth` must be one of {list(GROWTH)}, got {growth!r}.")
        _interval(update_every, "update_every", OFFICIAL_ITERATIONS)
        if isinstance(later_factor, bool) or not isinstance(later_factor, Real) or not (
                later_factor > 0 and math.isfinite(later_factor)):
            raise ValueError(f"`later_factor` must be a positive number, got {later_factor!r}.")
        _epoch_point(dynamic_epoch, "dynamic_epoch", 200)
        self.init, self.growth = init, growth
        self.update_every, self.later_factor, self.dynamic_epoch = update_every, float(later_factor), dynamic_epoch
        self.death_rate = _rate(death_rate, "death_rate")
        self.final_death_rate = _rate(final_death_rate, "final_death_rate")
        self.updates: list[dict] = []  # one entry per topology update
        self._every = self._later = 1
        self._switch = 0

    def settings(self) -> dict:
        return {"density": self.density, "init": self.init, "update_every": self.update_every,
                "later_factor": self.later_factor, "dynamic_epoch": self.dynamic_epoch,
                "death_rate": self.death_rate, "final_death_rate": self.final_death_rate, "growth": self.growth,
                "seed": self.seed,
                # omitted at the official value, so checkpoints written before the option existed resume
                **({"init_scale": self._init_scale} if self._init_scale != "none" else {})}

    def setup(self, trainer: Any) -> None:
        super().setup(trainer)  # draws and installs the initial masks (a resume loads weights after this)
        self._init_scale = self.init_scale
        if self.init_scale == "auto":
            normalised = any(isinstance(m, NORMALISATION) for m in self.primary.model.modules())
            self._init_scale = "none" if normalised else "fan_in"
        if self._init_scale == "fan_in":
            for model in self._models:
                self.masks.rescale_fan_in_(model)

    def _initial_masks(self, model: nn.Module) -> Masks:
        return Masks.from_densities(model, layer_densities(model, self.density, self.init), self.generator)

    def begin_fit(self, trainer: Any, nb_epochs: int, nb_batches: int, batches: Callable[[], Iterator[Batch]],
                  validation: Optional[Batch]) -> None:
        super().begin_fit(trainer, nb_epochs, nb_batches, batches, validation)
        total = nb_epochs * nb_batches
        self._every = _interval(self.update_every, "update_every", total)
        self._later = max(1, round(self._every * self.later_factor))
        self._switch = _epoch_point(self.dynamic_epoch, "dynamic_epoch", nb_epochs)
        logger.info("%s: density %.4f, topology update every %s iterations (%s after epoch %d) of %d",
                    self.method, self.current_density(), self._every, self._later, self._switch, total)

    def _after_iteration(self, learner: "Learner") -> None:
        if not self.nb_batches:  # a step outside fit (no budget): the masks hold, the topology waits
            return
        epoch = (self.iteration - 1) // self.nb_batches + 1
        every = self._later if epoch > self._switch else self._every
        if self.iteration % every == 0 and self.iteration < self.nb_epochs * self.nb_batches:
            self._update(learner, epoch)  # none at the last iteration: nothing would train the regrown weights

    def _adaptive(self, epoch: int) -> tuple[float, float]:
        """(extra prune ratio, growth factor) of an update in ``epoch``: none for Flying Bird."""
        return 0.0, 1.0

    def _update(self, learner: "Learner", epoch: int) -> None:
        rate = cosine_death_rate(self.iteration, self.nb_epochs * self.nb_batches, self.death_rate,
                                 self.final_death_rate)
        extra_prune, growth_factor = self._adaptive(epoch)
        counts = update_topology(self.masks, learner.model, rate, self.growth, self.generator,
                                 extra_prune=extra_prune, growth_factor=growth_factor, optimizer=learner.optimizer)
        self.apply_all()
        entry = {"iteration": self.iteration, "epoch": epoch, "death_rate": rate,
                 "pruned": sum(c["pruned"] for c in counts.values()), "grown": sum(c["grown"] for c in counts.values()),
                 "nnz": self.masks.nnz(), "extra_prune": extra_prune > 0, "extra_grow": growth_factor > 1}
        self.updates.append(entry)
        self._epoch["updates"] += 1
        logger.debug("%s topology update: %s", self.method, entry)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "updates": [dict(u) for u in self.updates]}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.updates = [dict(u) for u in state["updates"]]


class FlyingBirdPlus(FlyingBird):
    """Flying Bird+: Flying Bird with the adaptive extra prune and grow (see the module docstring).

    :param epoch_range: the number of last epoch-to-epoch changes the trend tests look at (4).
    :param update_threshold: the fraction of those changes that must rise (0.5).
    :param prune_ratio: extra prune, as a fraction of the death rate times the layer's nnz (0.4).
    :param growth_ratio: extra growth, as a fraction of the pruned count (0.05).
    Other arguments as :class:`FlyingBird`. ``fit`` needs ``validation_data`` and ``val_max_iter >= 1``.
    """

    method = "Flying Bird+"

    def __init__(self, density: float = 0.2, epoch_range: int = 4, update_threshold: float = 0.5,
                 prune_ratio: float = 0.4, growth_ratio: float = 0.05, **kwargs: Any) -> None:
        super().__init__(density, **kwargs)
        if isinstance(epoch_range, bool) or not isinstance(epoch_range, int) or epoch_range < 1:
            raise ValueError(f"`epoch_range` must be an integer >= 1, got {epoch_range!r}.")
        self.epoch_range = epoch_range
        self.update_threshold = _rate(update_threshold, "update_threshold")
        for name, value in (("prune_ratio", prune_ratio), ("growth_ratio", growth_ratio)):
            if isinstance(value, bool) or not isinstance(value, Real) or not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"`{name}` must be a non-negative number, got {value!r}.")
        self.prune_ratio, self.growth_ratio = float(prune_ratio), float(growth_ratio)
        self.gaps: list[float] = []  # per epoch of the run: train adversarial accuracy - val PGD accuracy
        self.losses: list[float] = []  # per epoch of the run: validation PGD loss

    def settings(self) -> dict:
        return {**super().settings(), "epoch_range": self.epoch_range, "update_threshold": self.update_threshold,
                "prune_ratio": self.prune_ratio, "growth_ratio": self.growth_ratio}

    def begin_fit(self, trainer: Any, nb_epochs: int, nb_batches: int, batches: Callable[[], Iterator[Batch]],
                  validation: Optional[Batch]) -> None:
        if validation is None:
            raise ValueError("FlyingBirdPlus needs `validation_data` in fit: its extra prune and grow follow the "
                             "validation PGD accuracy and loss (never pass test data).")
        if trainer.val_max_iter < 1:
            raise ValueError(f"FlyingBirdPlus needs PGD validation: build the trainer with `val_max_iter` >= 1, got "
                             f"{trainer.val_max_iter!r}.")
        super().begin_fit(trainer, nb_epochs, nb_batches, batches, validation)

    def _fresh_run(self) -> None:
        self.gaps, self.losses = [], []

    def after_epoch(self, trainer: Any, record: dict) -> None:
        super().after_epoch(trainer, record)
        val_acc, val_loss = record.get("val_pgd_acc"), record.get("val_pgd_loss")
        if val_acc is None or val_loss is None:
            raise ValueError(f"FlyingBirdPlus needs `val_pgd_acc` and `val_pgd_loss` in every epoch's record, got "
                             f"{val_acc!r} and {val_loss!r} at epoch {record.get('epoch')}.")
        gap = float(record["learners"][self.primary.name]["train_acc"]) - float(val_acc)
        self.gaps.append(gap)
        self.losses.append(float(val_loss))
        record["sparsity"]["gap"] = gap

    def _adaptive(self, epoch: int) -> tuple[float, float]:
        if epoch <= self._switch:
            return 0.0, 1.0
        prune = gap_trend(self.gaps, self.epoch_range, self.update_threshold)
        grow = loss_trend(self.losses, self.epoch_range, self.update_threshold)
        return (self.prune_ratio if prune else 0.0), (1.0 + self.growth_ratio if grow else 1.0)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "gaps": list(self.gaps), "losses": list(self.losses)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.gaps, self.losses = [float(v) for v in state["gaps"]], [float(v) for v in state["losses"]]
