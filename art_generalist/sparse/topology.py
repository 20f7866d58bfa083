"""Flying Bird topology updates and the early-bird / Flying Bird+ criteria, as pure functions.

Every count here is exact: ``magnitude_prune`` removes exactly ``n`` active entries and the
growth rules add exactly ``n`` inactive ones (ties broken by ``torch.topk``), where the official
code thresholds magnitudes and samples growth with a probability, so its counts drift.

One update (:func:`update_topology`) per layer, as ``sparselearning/core.py`` does it:

* skip layers that are fully dense or empty (the official ``magnitude_death`` leaves dense
  layers alone);
* prune ``n = ceil(death_rate * nnz)`` smallest-``|w|`` active weights, plus
  ``ceil(death_rate * extra_prune * nnz)`` more for Flying Bird+'s extra prune;
* grow ``floor(growth_factor * n)`` inactive entries (Flying Bird+'s extra growth uses
  ``growth_factor = 1 + growth_ratio``) at random (SET) or by largest ``|grad|`` (RigL). The
  just-pruned entries are candidates too, as in the official code and RigL;
* set every pruned entry of the weight to zero, so regrown weights start at exactly 0 (the
  official code lets a just-pruned-and-regrown weight keep its old value).

With the defaults (``extra_prune=0``, ``growth_factor=1``) each layer's density is unchanged.
"""
from __future__ import annotations

import logging
import math
from typing import Mapping, Optional, Sequence

import torch
from torch import nn

from art_generalist.sparse.masks import Masks

logger = logging.getLogger(__name__)

GROWTH = ("random", "gradient")


def cosine_death_rate(step: int, total_steps: int, initial: float = 0.5, final: float = 0.005) -> float:
    """``final + (initial - final) * (1 + cos(pi * step / total_steps)) / 2``, held at ``final`` after the end."""
    if total_steps <= 0:
        raise ValueError(f"`total_steps` must be positive, got {total_steps!r}.")
    if step < 0:
        raise ValueError(f"`step` must be non-negative, got {step!r}.")
    t = min(step, total_steps) / total_steps
    return final + (initial - final) * 0.5 * (1.0 + math.cos(math.pi * t))


def _check_mask(mask: torch.Tensor, other: torch.Tensor, what: str) -> None:
    if not torch.is_tensor(mask) or mask.dtype != torch.bool:
        raise TypeError(f"`mask` must be a boolean tensor, got {getattr(mask, 'dtype', type(mask).__name__)}.")
    if other.shape != mask.shape:
        raise ValueError(f"`{what}` has shape {tuple(other.shape)} but `mask` has {tuple(mask.shape)}.")


def _check_count(n: int, available: int, what: str) -> int:
    if isinstance(n, bool) or int(n) != n or n < 0:
        raise ValueError(f"`n` must be a non-negative integer, got {n!r}.")
    if n > available:
        raise ValueError(f"Cannot {what} n={n} entries: only {available} are available.")
    return int(n)


@torch.no_grad()
def magnitude_prune(weight: torch.Tensor, mask: torch.Tensor, n: int) -> torch.Tensor:
    """A new mask without the ``n`` smallest-``|w|`` active entries of ``mask``."""
    _check_mask(mask, weight, "weight")
    n = _check_count(n, int(mask.sum()), "prune")
    new = mask.clone()
    if n:
        scores = weight.detach().abs().float().masked_fill(~mask, math.inf).flatten()
        new.view(-1)[torch.topk(scores, n, largest=False, sorted=False).indices] = False
    return new


@torch.no_grad()
def random_grow(mask: torch.Tensor, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """A new mask with ``n`` inactive entries of ``mask`` activated uniformly at random.

    The draw happens on the CPU with ``generator`` (the global RNG when None).
    """
    _check_mask(mask, mask, "mask")
    inactive = (~mask).flatten().nonzero().squeeze(1)
    n = _check_count(n, inactive.numel(), "grow")
    new = mask.clone()
    if n:
        pick = torch.randperm(inactive.numel(), generator=generator)[:n].to(inactive.device)
        new.view(-1)[inactive[pick]] = True
    return new


@torch.no_grad()
def gradient_grow(mask: torch.Tensor, grad: torch.Tensor, n: int) -> torch.Tensor:
    """A new mask with the ``n`` inactive entries of largest ``|grad|`` activated (RigL)."""
    _check_mask(mask, grad, "grad")
    n = _check_count(n, int((~mask).sum()), "grow")
    new = mask.clone()
    if n:
        scores = grad.detach().abs().float().masked_fill(mask, -math.inf).flatten()
        new.view(-1)[torch.topk(scores, n, sorted=False).indices] = True
    return new


@torch.no_grad()
def update_topology(masks: Masks, model: nn.Module, death_rate: float, growth: str = "random",
                    generator: Optional[torch.Generator] = None, grads: Optional[Mapping[str, torch.Tensor]] = None,
                    extra_prune: float = 0.0, growth_factor: float = 1.0,
                    optimizer: Optional[torch.optim.Optimizer] = None) -> dict[str, dict[str, int]]:
    """Prune then grow every masked layer in place (see the module docstring).

    :param grads: per-layer gradients for ``growth="gradient"``; the weights' ``.grad`` when None.
    :param optimizer: when given, its state at the pruned entries is zeroed as well.
    :returns: ``{layer: {"pruned": p, "grown": g}}``.
    """
    if not 0.0 <= death_rate <= 1.0:
        raise ValueError(f"`death_rate` must lie in [0, 1], got {death_rate!r}.")
    if growth not in GROWTH:
        raise ValueError(f"`growth` must be one of {GROWTH}, got {growth!r}.")
    if extra_prune < 0 or growth_factor < 0:
        raise ValueError(f"`extra_prune` and `growth_factor` must be non-negative, got {extra_prune!r}, "
                         f"{growth_factor!r}.")
    params = masks.check(model)
    if growth == "gradient":  # all gradients are checked before any layer changes
        grads = {n: grads.get(n) if grads is not None else p.grad for n, p in params.items()}
        missing = [n for n, g in grads.items() if g is None]
        if missing:
            raise ValueError(f"Gradient growth needs the gradients of {missing[:5]}: pass `grads` or run backward "
                             f"first.")
        wrong = [n for n, g in grads.items() if tuple(g.shape) != tuple(params[n].shape)]
        if wrong:
            raise ValueError(f"`grads` has the wrong shape for {wrong[:5]}.")
    counts: dict[str, dict[str, int]] = {}
    for name, weight in params.items():
        mask = masks[name]
        nnz, numel = int(mask.sum()), mask.numel()
        if nnz in (0, numel):
            counts[name] = {"pruned": 0, "grown": 0}
            continue
        base = math.ceil(death_rate * nnz)
        n_prune = min(nnz, base + (math.ceil(death_rate * extra_prune * nnz) if extra_prune else 0))
        pruned = magnitude_prune(weight, mask, n_prune)
        n_grow = min(math.floor(base * growth_factor + 1e-9), numel - nnz + n_prune)
        if growth == "random":
            new = random_grow(pruned, n_grow, generator)
        else:
            new = gradient_grow(pruned, grads[name].to(mask.device), n_grow)
        removed = mask & ~pruned
        weight.masked_fill_(removed, 0)
        if optimizer is not None:
            for value in optimizer.state.get(weight, {}).values():
                if torch.is_tensor(value) and value.shape == weight.shape:
                    value.masked_fill_(removed.to(value.device), 0)
        masks[name] = new
        counts[name] = {"pruned": n_prune, "grown": n_grow}
    masks.apply_(model)
    if optimizer is not None:
        masks.apply_to_optimizer_(optimizer, model)
    logger.debug("Topology update (death rate %.4f, %s growth): %s", death_rate, growth, counts)
    return counts


def early_bird_emerged(history: Sequence[Masks], threshold: float = 0.08, window: int = 5) -> bool:
    """True when the newest mask is within normalised Hamming distance ``threshold`` of each of
    the previous ``window - 1`` masks (Robust Bird's test: 5 masks, 0.08). False with fewer masks."""
    if window < 2:
        raise ValueError(f"`window` must be at least 2, got {window!r}.")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"`threshold` must lie in [0, 1], got {threshold!r}.")
    if len(history) < window:
        return False
    newest = history[-1]
    return all(newest.hamming(old) <= threshold for old in history[-window:-1])


def _trend(values: Sequence[float], epoch_range: int, threshold: float, strict: bool) -> bool:
    if epoch_range < 1:
        raise ValueError(f"`epoch_range` must be at least 1, got {epoch_range!r}.")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"`threshold` must lie in [0, 1], got {threshold!r}.")
    if len(values) < epoch_range + 1:
        return False
    last = [float(v) for v in values[-(epoch_range + 1):]]
    diffs = [b - a for a, b in zip(last[:-1], last[1:])]
    rising = sum(d > 0 if strict else d >= 0 for d in diffs)
    return rising / len(diffs) >= threshold


def gap_trend(values: Sequence[float], epoch_range: int = 4, threshold: float = 0.5) -> bool:
    """Flying Bird+'s extra-prune test: at least ``threshold`` of the last ``epoch_range``
    epoch-to-epoch differences of the robust generalization gap are > 0 (the gap widens).
    False until ``epoch_range + 1`` values exist."""
    return _trend(values, epoch_range, threshold, strict=True)


def loss_trend(values: Sequence[float], epoch_range: int = 4, threshold: float = 0.5) -> bool:
    """Flying Bird+'s extra-growth test: at least ``threshold`` of the last ``epoch_range``
    differences of the validation robust loss are >= 0. False until ``epoch_range + 1`` values exist."""
    return _trend(values, epoch_range, threshold, strict=False)
