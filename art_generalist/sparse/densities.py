"""Layer-wise density allocation for a global density ``D`` over the prunable layers.

Each allocator takes the layers as a model (its prunable layers, see
:mod:`art_generalist.sparse.layers`) or as a mapping ``name -> weight shape``, and returns
``dict[name, float]`` with every density in (0, 1] and ``sum_l d_l * n_l`` equal to ``D * N``
within one weight (``n_l`` = entries of layer ``l``, ``N = sum_l n_l``):

* ``uniform``: ``d_l = D``.
* ``erk`` (Erdős–Rényi-Kernel, Evci et al. 2020, RigL): ``d_l = eps * (sum of the shape's dims) /
  (product of the dims)``, kernel dims included. Layers whose ``d_l`` would exceed 1 are made
  dense and ``eps`` is re-solved over the others until no layer exceeds 1. Small layers get
  higher density than large ones.
* ``igq`` (Ideal Gas Quotas, Vysogorets & Kempe 2021), the official Flying Bird default, in the
  form of the official ``sparselearning/igq.py``: ``d_l = 1 / (1 + F * n_l)``, with the "force"
  ``F >= 0`` found by bisection so that ``sum_l n_l / (1 + F * n_l) = D * N``.

Masks built from these densities round per layer (``round(d_l * n_l)`` kept entries), so their
global count may differ from ``round(D * N)`` by up to half a weight per layer.
"""
from __future__ import annotations

import logging
import math
from typing import Callable, Mapping, Sequence, Union

from torch import nn

from art_generalist.sparse.layers import check_density, prunable_weights

logger = logging.getLogger(__name__)

Layers = Union[nn.Module, Mapping[str, Sequence[int]]]


def _shapes(layers: Layers, kinds: str = "conv+linear") -> dict[str, tuple[int, ...]]:
    if isinstance(layers, nn.Module):
        return {n: tuple(w.shape) for n, w in prunable_weights(layers, kinds).items()}
    if not isinstance(layers, Mapping) or not layers:
        raise ValueError(f"`layers` must be a model or a non-empty mapping name -> shape, got {layers!r}.")
    shapes = {}
    for name, shape in layers.items():
        shape = tuple(int(s) for s in shape)
        if not shape or any(s <= 0 for s in shape):
            raise ValueError(f"Layer `{name}` must have a non-empty shape of positive sizes, got {shape}.")
        shapes[name] = shape
    return shapes


def _check_total(densities: dict[str, float], shapes: dict[str, tuple[int, ...]], density: float,
                 method: str) -> dict[str, float]:
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    kept = sum(densities[n] * sizes[n] for n in shapes)
    target = density * sum(sizes.values())
    if abs(kept - target) > 1.0 or not all(0.0 < d <= 1.0 for d in densities.values()):
        raise RuntimeError(f"{method} allocation failed: {kept:.2f} kept weights for a target of {target:.2f}.")
    return densities


def uniform(layers: Layers, density: float) -> dict[str, float]:
    """Every layer at the global density."""
    density = check_density(density)
    return {n: density for n in _shapes(layers)}


def erk(layers: Layers, density: float, power_scale: float = 1.0) -> dict[str, float]:
    """Erdős–Rényi-Kernel densities (see the module docstring); ``power_scale`` as RigL's."""
    density = check_density(density)
    shapes = _shapes(layers)
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    raw = {n: (sum(s) / math.prod(s)) ** power_scale for n, s in shapes.items()}
    dense: set[str] = set()
    while True:
        budget = density * sum(sizes.values()) - sum(sizes[n] for n in dense)
        rest = [n for n in shapes if n not in dense]
        if not rest:  # only reachable at density 1
            break
        eps = budget / sum(raw[n] * sizes[n] for n in rest)
        over = [n for n in rest if eps * raw[n] > 1.0]
        if not over:
            break
        dense.update(over)
    result = {n: 1.0 if n in dense else min(1.0, eps * raw[n]) for n in shapes}
    logger.debug("ERK densities at %.4f: %s (dense: %s)", density, result, sorted(dense))
    return _check_total(result, shapes, density, "ERK")


def igq(layers: Layers, density: float, iterations: int = 200) -> dict[str, float]:
    """Ideal Gas Quotas ``d_l = 1 / (1 + F n_l)`` with ``F`` bisected to the global density."""
    density = check_density(density)
    shapes = _shapes(layers)
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    if density == 1.0:
        return {n: 1.0 for n in shapes}
    target = density * sum(sizes.values())

    def kept(force: float) -> float:
        return sum(n / (1.0 + force * n) for n in sizes.values())

    low, high = 0.0, 1.0
    while kept(high) > target:
        high *= 2.0
    for _ in range(iterations):
        mid = 0.5 * (low + high)
        if kept(mid) > target:
            low = mid
        else:
            high = mid
        if high - low <= 1e-15 * high:
            break
    force = 0.5 * (low + high)
    result = {name: 1.0 / (1.0 + force * n) for name, n in sizes.items()}
    logger.debug("IGQ densities at %.4f (force %.3e): %s", density, force, result)
    return _check_total(result, shapes, density, "IGQ")


METHODS: dict[str, Callable[[Layers, float], dict[str, float]]] = {"uniform": uniform, "erk": erk, "igq": igq}


def layer_densities(model: Layers, density: float, method: str = "igq") -> dict[str, float]:
    """Per-layer densities of ``model``'s prunable layers by ``method`` (``uniform``, ``erk``, ``igq``)."""
    key = method.lower() if isinstance(method, str) else method
    if key not in METHODS:
        raise ValueError(f"`method` must be one of {sorted(METHODS)}, got {method!r}.")
    return METHODS[key](model, density)
