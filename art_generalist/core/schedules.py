"""Schedules of the Generalist algorithm: β (mixing weight), learning rate, EMA decay, distribution.

Epochs are numbered from 1 to ``nb_epochs`` as in the official code (PKU-ML/Generalist
``main.py``); a schedule is evaluated at the epoch number, or at a fractional epoch when
schedules run per iteration.
"""
from __future__ import annotations

import bisect
import numbers
from typing import Callable, Sequence, Union

#: A schedule maps (epoch, nb_epochs) to a value; epoch may be fractional.
Schedule = Callable[[float, int], float]

_TOL = 1e-9


class PiecewiseLinear:
    """Piecewise-linear interpolation through knots given as fractions of the epoch budget.

    ``PiecewiseLinear((0, 1/3, 2/3, 1), (1, 1, 1, 0.4))(e, E)`` is ``np.interp(e, [0, E/3, 2E/3, E],
    [1, 1, 1, 0.4])``, the official β schedule. Values are held constant outside the knots.
    Set ``absolute=True`` to give knots in epochs instead of fractions.
    """

    def __init__(self, knots: Sequence[float], values: Sequence[float], absolute: bool = False) -> None:
        knots, values = [float(k) for k in knots], [float(v) for v in values]
        if len(knots) != len(values) or len(knots) < 1:
            raise ValueError(
                f"`knots` and `values` must be non-empty and of equal length, got {len(knots)} and {len(values)}."
            )
        if any(b < a for a, b in zip(knots, knots[1:])):
            raise ValueError(f"`knots` must be non-decreasing, got {knots}.")
        if not absolute and (knots[0] < 0 or knots[-1] > 1):
            raise ValueError(f"Fractional `knots` must lie in [0, 1], got {knots}; pass absolute=True for epochs.")
        self.knots, self.values, self.absolute = tuple(knots), tuple(values), absolute

    def __call__(self, epoch: float, nb_epochs: int) -> float:
        xs = self.knots if self.absolute else tuple(k * nb_epochs for k in self.knots)
        if epoch <= xs[0]:
            return self.values[0]
        if epoch >= xs[-1]:
            return self.values[-1]
        i = bisect.bisect_right(xs, epoch)
        x0, x1, y0, y1 = xs[i - 1], xs[i], self.values[i - 1], self.values[i]
        return y0 if x1 == x0 else y0 + (y1 - y0) * (epoch - x0) / (x1 - x0)

    def __repr__(self) -> str:
        return f"PiecewiseLinear(knots={self.knots}, values={self.values}, absolute={self.absolute})"


#: β(e): weight of the robust teacher in the global mix (the official code's knots).
OFFICIAL_BETA = PiecewiseLinear((0.0, 1 / 3, 2 / 3, 1.0), (1.0, 1.0, 1.0, 0.4))
#: Learning-rate factor: lr, lr, lr/10, lr/100 at 0, E/3, 2E/3, E (official ResNet-18 schedule).
OFFICIAL_LR = PiecewiseLinear((0.0, 1 / 3, 2 / 3, 1.0), (1.0, 1.0, 0.1, 0.01))


class MultiStep:
    """Step decay: factor ``gamma ** k`` after ``k`` milestones have passed (``torch``'s MultiStepLR).

    Milestones are fractions of the budget (epochs when ``absolute=True``). An epoch, or a
    fractional epoch, strictly past a milestone gets the decayed factor, so with milestones (0.5,
    0.75) of 200 epochs the 1-based epochs 1-100 train at lr, 101-150 at lr/10 and 151-200 at
    lr/100: the official Sparsity Winning Twice schedule (MultiStepLR at epochs 100 and 150).
    """

    def __init__(self, milestones: Sequence[float] = (0.5, 0.75), gamma: float = 0.1, absolute: bool = False) -> None:
        milestones = tuple(float(m) for m in milestones)
        if any(b < a for a, b in zip(milestones, milestones[1:])):
            raise ValueError(f"`milestones` must be non-decreasing, got {list(milestones)}.")
        if not absolute and any(not 0.0 <= m <= 1.0 for m in milestones):
            raise ValueError(f"Fractional `milestones` must lie in [0, 1], got {list(milestones)}; "
                             "pass absolute=True for epochs.")
        if not gamma > 0:
            raise ValueError(f"`gamma` must be > 0, got {gamma}.")
        self.milestones, self.gamma, self.absolute = milestones, float(gamma), absolute

    def __call__(self, epoch: float, nb_epochs: int) -> float:
        scale = 1.0 if self.absolute else float(nb_epochs)
        passed = sum(epoch > m * scale + _TOL for m in self.milestones)
        return self.gamma ** passed

    def __repr__(self) -> str:
        return f"MultiStep(milestones={self.milestones}, gamma={self.gamma}, absolute={self.absolute})"


#: The learning-rate schedules known by name (besides "official" and "constant").
NAMED_SCHEDULES = {"multistep": MultiStep()}


def fractional_epoch(epoch: int, step: int, nb_batches: int) -> float:
    """Progress after iteration ``step`` (0-based) of 1-based ``epoch`` with ``nb_batches`` per
    epoch: the time at which per-iteration schedules are read."""
    return epoch - 1 + (step + 1) / nb_batches


def constant(epoch: float, nb_epochs: int) -> float:
    """The constant schedule (factor 1)."""
    return 1.0


def resolve_schedule(value: Union[None, str, Schedule, Sequence[float]], name: str,
                     official: PiecewiseLinear) -> Schedule:
    """Turn a user's schedule argument into a callable ``(epoch, nb_epochs) -> value``.

    Accepts ``"official"``, ``None``/``"constant"`` (factor 1), ``"multistep"`` (×0.1 at 1/2 and
    3/4 of the budget, the sparse paper's schedule), a ``(knots, values)`` pair of fractional
    knots, or any callable with that signature.
    """
    if value == "official":
        return official
    if isinstance(value, str) and value in NAMED_SCHEDULES:
        return NAMED_SCHEDULES[value]
    if value is None or value == "constant":
        return constant
    if callable(value):
        return value
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return PiecewiseLinear(value[0], value[1])
    raise ValueError(
        f"`{name}` must be 'official', 'constant', 'multistep', None, a (knots, values) pair or a callable "
        f"(epoch, nb_epochs) -> float, got {value!r}."
    )


def ema_decay(step: int, decay: float = 0.999, warmup: bool = True, warmup_k: float = 10.0) -> float:
    """EMA decay at update ``step`` (0-based): ``min(decay, (t+1)/(t+k))`` with warm-up (k = 10
    officially)."""
    return min(decay, (step + 1.0) / (step + warmup_k)) if warmup else decay


#: Iterations of the official run: 120 epochs of 391 CIFAR-10 batches of 128.
OFFICIAL_ITERATIONS = 120 * 391
#: The official EMA horizon (1 - 0.999)^-1 = 1,000 iterations as a fraction of the run (2.13%).
OFFICIAL_HORIZON = 1000 / OFFICIAL_ITERATIONS
#: Where the official warm-up reaches 0.999, (10·0.999 - 1) / 0.001 = 8,990 iterations, as a fraction (19.2%).
OFFICIAL_WARMUP_END = (10 * 0.999 - 1) / 0.001 / OFFICIAL_ITERATIONS


def budget_relative_ema(nb_iterations: int) -> tuple[float, float]:
    """``(decay, warmup_k)`` that keep the official run's EMA time scales as fractions of a budget
    of ``nb_iterations``: the horizon ``(1-d)^-1`` at 2.13% of the run (``d = 1 - 46.92/N``) and
    the warm-up ``(t+1)/(t+k)`` reaching ``d`` at 19.2% of it. At the official 46,920 iterations
    this is exactly (0.999, 10). Below 47 iterations the decay is 0 (no averaging)."""
    if nb_iterations < 1:
        raise ValueError(f"The iteration budget must be >= 1, got {nb_iterations}.")
    decay = max(0.0, 1.0 - 1.0 / (OFFICIAL_HORIZON * nb_iterations))
    if decay == 0.0:
        return 0.0, 1.0
    warmup_k = (OFFICIAL_WARMUP_END * nb_iterations * (1.0 - decay) + 1.0) / decay
    return decay, warmup_k


def resolve_epochs(value: Union[int, float], nb_epochs: int, name: str, positive: bool = True) -> float:
    """An epoch span given as a fraction of the budget (float in [0, 1]) or in epochs (int)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"`{name}` must be an int (epochs) or a float in [0, 1] (fraction of the budget), "
                         f"got {value!r}.")
    if isinstance(value, numbers.Integral):
        if value < 1:
            raise ValueError(f"`{name}` in epochs must be >= 1, got {value}.")
        return float(value)
    if not 0.0 <= value <= 1.0 or (positive and value == 0):
        raise ValueError(f"`{name}` as a fraction of the epoch budget must lie in (0, 1], got {value}.")
    return float(value) * nb_epochs


class DistributionSchedule:
    """When the global learner is copied back into the base learners (t', c).

    The official code copies G after every iteration of epochs 75, 80, ..., 120 of a 120-epoch
    run: windows of ``length`` = 1 epoch ending at ``start`` = t' = 75 and every ``every`` = c = 5
    epochs after. Each argument is a fraction of the budget when a float (defaults 0.625, 1/24
    and 1/120 reproduce 75, 5 and 1 at 120 epochs) or a number of epochs when an int. A short run
    is the official run compressed in time: at 10 epochs the windows are 1/12 epoch long, ending
    at epochs 6.25, 6.67, ..., 10.

    Progress is measured in fractional epochs completed; iteration ``i`` of ``n`` in 1-based
    epoch ``e`` covers progress ``(e-1 + i/n, e-1 + (i+1)/n]``. An iteration distributes when its
    span overlaps a window (per-iteration mode, official), or contains a window's end (once).
    """

    def __init__(self, start: Union[int, float] = 0.625, every: Union[int, float] = 1 / 24,
                 length: Union[int, float] = 1 / 120) -> None:
        self.start, self.every, self.length = start, every, length
        self.windows(120)  # validates the arguments

    def windows(self, nb_epochs: int) -> list[tuple[float, float]]:
        """The ``(begin, end]`` progress intervals of the distribution windows."""
        end = resolve_epochs(self.start, nb_epochs, "distribute_start")
        every = resolve_epochs(self.every, nb_epochs, "distribute_every")
        length = resolve_epochs(self.length, nb_epochs, "distribute_length")
        if length > every + _TOL:
            raise ValueError(f"`distribute_length` ({length:g} epochs) must not exceed `distribute_every` "
                             f"({every:g} epochs).")
        count = int((nb_epochs - end) / every + _TOL) + 1 if end <= nb_epochs + _TOL else 0
        return [(max(0.0, end + j * every - length), end + j * every) for j in range(count)]

    @staticmethod
    def active(windows: list[tuple[float, float]], before: float, after: float, per_iteration: bool = True) -> bool:
        """Whether the iteration spanning progress ``(before, after]`` distributes."""
        if per_iteration:
            return any(lo < after - _TOL and hi > before + _TOL for lo, hi in windows)
        return any(before + _TOL < hi <= after + _TOL for _, hi in windows)

    def epochs(self, nb_epochs: int) -> list[int]:
        """The 1-based epochs that contain (part of) a distribution window."""
        wins = self.windows(nb_epochs)
        return [e for e in range(1, nb_epochs + 1) if self.active(wins, e - 1.0, float(e))]

    def __repr__(self) -> str:
        return f"DistributionSchedule(start={self.start!r}, every={self.every!r}, length={self.length!r})"


def distribution_epochs(nb_epochs: int, start: Union[int, float] = 0.625, every: Union[int, float] = 1 / 24,
                        length: Union[int, float] = 1 / 120) -> list[int]:
    """Epochs (1-based) that contain a distribution window: 75, 80, ..., 120 at 120 epochs."""
    return DistributionSchedule(start, every, length).epochs(nb_epochs)
