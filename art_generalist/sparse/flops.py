"""FLOPs accounting for sparse (adversarial) training, measured on the real model.

Counts come from ``torch.utils.flop_counter.FlopCounterMode`` on one example (batch of 1), on a
deep copy of the model in eval mode (so the caller's BatchNorm statistics and gradients stay as
they are). Three passes are measured, each attributed to the Conv2d/Linear layers:

* ``forward``: one forward pass (what inference costs);
* ``backward``: the backward pass of a training step (weight gradients, and input gradients of
  every layer but the first, whose input needs none);
* ``input_backward``: the backward pass of one attack step, which needs input gradients only
  (measured with every parameter's ``requires_grad`` off and the input's on).

Backward costs are the counter's figure for forward+backward minus the forward's. Whole-model
totals are the counter's own; the share of each layer comes from replaying that layer alone,
under the counter, on the input shape and ``requires_grad`` it saw in the real pass (the
counter's module attribution is wrong in the backward of branching models: a residual
shortcut's scope stays open while the main branch's gradients are computed). Ops outside the
prunable layers (e.g. an attention ``bmm``) are the remainder, kept as ``other`` and never scaled.

Figures per example, dense and sparse (each layer's count scaled by its mask density, as the
official ``flops.py`` scales the sparse stage; layers without a mask count as dense):

* inference = forward;
* natural training = forward + backward (about 3x forward);
* PGD-k adversarial training = k * (forward + input_backward) + forward + backward.

The official ``flops.py`` uses a hand formula instead: a training step of 4x forward (its
"backward" is 3x forward), an attack step of forward + ``3 * forward - 2 * #params + 2 * 32**2``,
and the whole sparse stage scaled by the global density. Here the backward passes are measured
(about 2x and 1x forward) and elementwise ops are not counted (the counter counts matrix
products and convolutions), so absolute figures are lower than the paper's. Sparse training
counts the weight gradients at the kept entries only, which is what a sparse kernel would
compute; RigL's gradient growth needs a dense gradient at each topology update, a negligible
extra.

Unstructured sparsity saves FLOPs, not wall-clock time: dense kernels multiply the zeros all the
same, so a masked model trains and infers as fast as the dense one on GPUs and CPUs. Only
structured (channel) pruning or sparse kernels turn these savings into time.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from art_generalist.sparse.layers import prunable_modules, prunable_weights
from art_generalist.sparse.masks import Masks

logger = logging.getLogger(__name__)

PASSES = ("forward", "backward", "input_backward")


def _check_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in input_shape)
    except TypeError:
        raise TypeError(f"`input_shape` must be a sequence of sizes without the batch dimension, "
                        f"got {input_shape!r}.") from None
    if not shape or any(s <= 0 for s in shape):
        raise ValueError(f"`input_shape` must hold positive sizes (no batch dimension), got {input_shape!r}.")
    return shape


def _check_steps(attack_steps: int) -> int:
    if isinstance(attack_steps, bool) or not isinstance(attack_steps, int) or attack_steps < 0:
        raise ValueError(f"`attack_steps` must be a non-negative integer, got {attack_steps!r}.")
    return attack_steps


def _scalar(out: Any) -> torch.Tensor:
    if torch.is_tensor(out):
        return out.float().sum()
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        parts = [_scalar(o) for o in out if torch.is_tensor(o) or isinstance(o, (list, tuple, dict))]
        if parts:
            return torch.stack(parts).sum()
    raise TypeError(f"The model's output must be a tensor (or tensors in a list, tuple or dict), "
                    f"got {type(out).__name__}.")


def _layer_modules(model: nn.Module) -> dict[nn.Module, str]:
    """Every Conv2d/Linear module of ``model`` -> the name of its (prunable) weight."""
    names = {id(w): n for n, w in prunable_weights(model).items()}
    return {m: names[id(m.weight)] for m in model.modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and id(m.weight) in names}


def _replay(module: nn.Module, x: torch.Tensor, backward: bool) -> tuple[int, int]:
    """(forward, forward + backward) FLOPs of ``module`` alone on ``x``."""
    with FlopCounterMode(display=False) as counter:
        out = module(x)
        forward = counter.get_total_flops()
        if backward and out.requires_grad:
            out.float().sum().backward()
    return forward, counter.get_total_flops()


def _count(model: nn.Module, x: torch.Tensor, backward: bool) -> tuple[dict[str, int], dict[str, int], int]:
    """One pass of ``model`` (forward, plus backward when asked) under the counter.

    Returns (per-layer forward, per-layer forward + backward, whole-model total). The total is
    the counter's; each layer is replayed alone on the input shape and ``requires_grad`` it saw,
    because the counter's module attribution breaks in the backward of branching models
    (a residual shortcut's scope stays open over the main branch's gradients).
    """
    layers = _layer_modules(model)
    calls: list[tuple[nn.Module, torch.Size, torch.dtype, bool]] = []

    def record(module: nn.Module, args: tuple) -> None:
        calls.append((module, args[0].shape, args[0].dtype, bool(args[0].requires_grad)))

    hooks = [m.register_forward_pre_hook(record) for m in layers]
    try:
        with FlopCounterMode(display=False) as counter, torch.enable_grad() if backward else torch.no_grad():
            out = _scalar(model(x))
            if backward and out.requires_grad:
                out.backward()
    finally:
        for h in hooks:
            h.remove()
    forward, total = dict.fromkeys(layers.values(), 0), dict.fromkeys(layers.values(), 0)
    for module, shape, dtype, input_grad in calls:
        with torch.enable_grad() if backward else torch.no_grad():
            xin = torch.zeros(shape, dtype=dtype, device=x.device, requires_grad=input_grad and backward)
            f, t = _replay(module, xin, backward)
        forward[layers[module]] += f
        total[layers[module]] += t
    return forward, total, counter.get_total_flops()


def _measure(model: nn.Module, input_shape: Sequence[int]) -> dict[str, tuple[dict[str, int], int]]:
    """Per pass: (per-layer FLOPs, whole-model FLOPs), backward passes net of their forward."""
    shape = _check_shape(input_shape)
    prunable_modules(model)  # clear error for a model without prunable layer
    with torch.inference_mode(False):  # copies made in inference mode could not be differentiated
        work = copy.deepcopy(model).eval()
        work.zero_grad(set_to_none=True)
        ref = next(work.parameters())
        dtype = ref.dtype if ref.is_floating_point() else torch.get_default_dtype()
        x = torch.zeros((1, *shape), dtype=dtype, device=ref.device)
        fwd, _, fwd_total = _count(work, x, backward=False)
        result = {"forward": (fwd, fwd_total)}
        for name, data_grad in (("backward", False), ("input_backward", True)):
            if data_grad:  # the attack's pass: input gradients only
                for p in work.parameters():
                    p.requires_grad_(False)
            f, t, total = _count(work, x.clone().requires_grad_(data_grad), backward=True)
            result[name] = ({n: t[n] - f[n] for n in t}, total - fwd_total)
    return result


def forward_flops_per_layer(model: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    """Forward FLOPs of one example per Conv2d/Linear layer, keyed by weight name like :class:`Masks`."""
    return dict(_measure(model, input_shape)["forward"][0])


@dataclass
class SparseFlops:
    """Measured per-example FLOPs per layer and pass, and the layers' mask densities."""

    layers: dict[str, dict[str, int]]
    other: dict[str, int]
    sizes: dict[str, int]
    densities: dict[str, float] = field(default_factory=dict)

    @classmethod
    def measure(cls, model: nn.Module, input_shape: Sequence[int], masks: Optional[Masks] = None) -> "SparseFlops":
        """Count the three passes on ``model`` (see the module docstring); ``masks`` gives the densities."""
        counts = _measure(model, input_shape)
        names = list(counts["forward"][0])
        layers = {n: {p: int(counts[p][0][n]) for p in PASSES} for n in names}
        other = {p: int(counts[p][1] - sum(counts[p][0].values())) for p in PASSES}
        sizes = {n: m.weight.numel() for n, m in prunable_modules(model).items()}
        densities = {n: 1.0 for n in names}
        if masks is not None:
            if not isinstance(masks, Masks):
                raise TypeError(f"`masks` must be art_generalist.sparse.Masks, got {type(masks).__name__}.")
            unknown = [n for n in masks if n not in densities]
            if unknown:
                raise ValueError(f"`masks` names layers that are not prunable layers of the model: {unknown[:5]}.")
            for n, m in masks.items():
                if m.shape != model.get_parameter(n).shape:
                    raise ValueError(f"Mask `{n}` has shape {tuple(m.shape)}, the model's weight "
                                     f"{tuple(model.get_parameter(n).shape)}.")
            densities.update(masks.layer_densities())
        return cls(layers, other, sizes, densities)

    def total(self, which: str, sparse: bool = True) -> float:
        """One pass (``forward``, ``backward`` or ``input_backward``) over the whole model."""
        if which not in PASSES:
            raise ValueError(f"`which` must be one of {PASSES}, got {which!r}.")
        scale = self.densities if sparse else {}
        return self.other[which] + sum(c[which] * scale.get(n, 1.0) for n, c in self.layers.items())

    def inference(self, sparse: bool = True) -> float:
        return self.total("forward", sparse)

    def natural_training(self, sparse: bool = True) -> float:
        return self.total("forward", sparse) + self.total("backward", sparse)

    def adversarial_training(self, attack_steps: int = 10, sparse: bool = True) -> float:
        attack_steps = _check_steps(attack_steps)
        step = self.total("forward", sparse) + self.total("input_backward", sparse)
        return attack_steps * step + self.natural_training(sparse)

    def density(self) -> float:
        """Kept fraction over all prunable weights (layers without a mask count as dense)."""
        return sum(self.densities[n] * s for n, s in self.sizes.items()) / sum(self.sizes.values())

    def report(self, attack_steps: int = 10) -> dict:
        """Plain numbers per example (see :func:`flops_report`)."""
        figures: dict[str, Any] = {"per": "example", "attack_steps": _check_steps(attack_steps),
                                   "density": self.density()}
        for key, fn in (("inference", lambda s: self.inference(s)), ("train_natural", self.natural_training),
                        ("train_adversarial", lambda s: self.adversarial_training(attack_steps, s))):
            figures[f"{key}_dense"], figures[f"{key}_sparse"] = float(fn(False)), float(fn(True))
        for p in PASSES:
            figures[f"{p}_dense"] = float(self.total(p, sparse=False))
        figures["layers"] = {n: {"density": self.densities[n], **c} for n, c in self.layers.items()}
        figures["other"] = dict(self.other)
        return figures


def flops_report(model: nn.Module, input_shape: Sequence[int], masks: Optional[Masks] = None,
                 attack_steps: int = 10) -> dict:
    """Per-example FLOPs of ``model`` on inputs of ``input_shape`` (no batch dimension).

    Keys: ``inference_{dense,sparse}``, ``train_natural_{dense,sparse}``,
    ``train_adversarial_{dense,sparse}`` (PGD-``attack_steps`` AT), ``{forward,backward,
    input_backward}_dense``, ``density``, ``attack_steps``, ``per`` and ``layers`` (per weight name:
    density and the three passes) and ``other`` (unscaled ops). "dense" is the same model without
    masks (the dense-equivalent figure). Multiply by examples per epoch and epochs for totals.
    """
    return SparseFlops.measure(model, input_shape, masks).report(attack_steps)
