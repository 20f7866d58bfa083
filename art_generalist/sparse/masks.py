"""Boolean weight masks for unstructured sparsity, kept beside the model rather than inside it.

A :class:`Masks` holds one boolean tensor per prunable weight (Conv2d and Linear weights; see
:mod:`art_generalist.sparse.layers`), keyed by the weight's parameter name (``"0.weight"``).
``True`` marks a kept (active) weight. The model itself is left untouched: :meth:`Masks.apply_`
zeroes the masked weights in place and :meth:`Masks.apply_to_optimizer_` zeroes the matching
optimizer state, to be called after every optimizer step.

Why not ``torch.nn.utils.prune``: it reparametrises each pruned module (``weight`` becomes a
plain attribute recomputed from ``weight_orig * weight_mask`` by a forward pre-hook). ``deepcopy``
of such modules fails (the derived ``weight`` is not a graph leaf), and the package deep-copies
models for its learners, teachers and exports. It also changes the state-dict keys
(``weight_orig``), keeps a second copy of every mask in ``CustomFromMask`` and multiplies the
weight by the mask on every forward. Masks kept here leave the model's parameters, keys and
deep copies as they are; the state-dict form of a mask (``"<param>_mask"``, e.g.
``"0.weight_mask"``) matches the buffer name ``prune`` would use, so such masks load too.
"""
from __future__ import annotations

import logging
from typing import Iterator, Mapping, Optional, Union

import torch
from torch import nn

from art_generalist.sparse.layers import check_density, prunable_weights

logger = logging.getLogger(__name__)

SUFFIX = "_mask"


class Masks:
    """One boolean mask per prunable weight, keyed by parameter name (``True`` = kept)."""

    def __init__(self, masks: Mapping[str, torch.Tensor]) -> None:
        if not masks:
            raise ValueError("`masks` must hold at least one mask, got an empty mapping.")
        self._masks: dict[str, torch.Tensor] = {}
        for name, mask in masks.items():
            self._masks[name] = _as_bool(mask, name)
        self._inverse: dict[str, torch.Tensor] = {}

    # -- constructors ------------------------------------------------------------------------
    @classmethod
    def dense(cls, model: nn.Module, layers: str = "conv+linear") -> "Masks":
        """All-ones masks over the prunable layers of ``model``."""
        return cls({n: torch.ones_like(w, dtype=torch.bool) for n, w in prunable_weights(model, layers).items()})

    @classmethod
    def from_densities(cls, model: nn.Module, densities: Mapping[str, float],
                       generator: Optional[torch.Generator] = None, layers: str = "conv+linear") -> "Masks":
        """Random masks with exactly ``max(1, round(d * numel))`` kept entries per layer.

        ``densities`` must name every prunable layer (a density of 1.0 keeps a layer dense).
        Positions are drawn on the CPU with ``generator`` (the global RNG when None), so the
        same generator state gives the same masks on every device.
        """
        weights = prunable_weights(model, layers)
        _check_names(densities, weights, "densities", " Give every prunable layer; 1.0 keeps one dense.")
        masks = {}
        for name, w in weights.items():
            d = check_density(densities[name], f"densities[{name!r}]")
            k = max(1, round(d * w.numel()))
            flat = torch.zeros(w.numel(), dtype=torch.bool)
            flat[torch.randperm(w.numel(), generator=generator)[:k]] = True
            masks[name] = flat.view(w.shape).to(w.device)
        return cls(masks)

    @classmethod
    def global_magnitude(cls, model: nn.Module, density: float, layers: str = "conv") -> "Masks":
        """Keep the globally largest ``|w|`` over the selected layers, exactly ``max(1, round(D * total))``.

        ``layers="conv"`` is Robust Bird's early-bird mask, ``"conv+linear"`` its pruning step.
        A layer may end up with few or no kept weights (global magnitude pruning allows it).
        """
        density = check_density(density)
        weights = prunable_weights(model, layers)
        with torch.no_grad():
            scores = torch.cat([w.detach().abs().flatten().float() for w in weights.values()])
            k = max(1, round(density * scores.numel()))
            flat = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
            flat[torch.topk(scores, k, sorted=False).indices] = True
        masks, start = {}, 0
        for name, w in weights.items():
            masks[name] = flat[start:start + w.numel()].view(w.shape).clone()
            start += w.numel()
        return cls(masks)

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor]) -> "Masks":
        """Masks from :meth:`state_dict` output (keys ``"<param>_mask"``)."""
        return cls(_strip(state))

    # -- mapping access ----------------------------------------------------------------------
    def __getitem__(self, name: str) -> torch.Tensor:
        return self._masks[name]

    def __setitem__(self, name: str, mask: torch.Tensor) -> None:
        if name not in self._masks:
            raise KeyError(f"No mask named {name!r}; the masked layers are {list(self._masks)}.")
        mask = _as_bool(mask, name)
        if mask.shape != self._masks[name].shape:
            raise ValueError(f"Mask `{name}` must keep shape {tuple(self._masks[name].shape)}, "
                             f"got {tuple(mask.shape)}.")
        self._masks[name] = mask.to(self._masks[name].device)
        self._inverse.pop(name, None)

    def __contains__(self, name: object) -> bool:
        return name in self._masks

    def __iter__(self) -> Iterator[str]:
        return iter(self._masks)

    def __len__(self) -> int:
        return len(self._masks)

    def names(self) -> list[str]:
        return list(self._masks)

    def items(self):
        return self._masks.items()

    def clone(self) -> "Masks":
        return Masks({n: m.clone() for n, m in self._masks.items()})

    def equal(self, other: "Masks") -> bool:
        """Same layer names and identical masks."""
        return self.names() == other.names() and all(
            torch.equal(m.cpu(), other[n].cpu()) for n, m in self._masks.items())

    # -- statistics --------------------------------------------------------------------------
    def layer_nnz(self) -> dict[str, int]:
        return {n: int(m.sum()) for n, m in self._masks.items()}

    def nnz(self) -> int:
        """Kept entries over all masked layers."""
        return sum(self.layer_nnz().values())

    def numel(self) -> int:
        return sum(m.numel() for m in self._masks.values())

    def layer_densities(self) -> dict[str, float]:
        return {n: int(m.sum()) / m.numel() for n, m in self._masks.items()}

    def density(self) -> float:
        """Global density: kept entries / masked entries."""
        return self.nnz() / self.numel()

    def hamming(self, other: "Masks") -> float:
        """Normalised Hamming distance: differing entries / all masked entries (early-bird metric)."""
        if not isinstance(other, Masks):
            raise TypeError(f"`other` must be Masks, got {type(other).__name__}.")
        _check_names(other._masks, self._masks, "other")
        differ = 0
        for name, m in self._masks.items():
            if other[name].shape != m.shape:
                raise ValueError(f"Mask `{name}` has shape {tuple(other[name].shape)} in `other` and "
                                 f"{tuple(m.shape)} here.")
            differ += int((m != other[name].to(m.device)).sum())
        return differ / self.numel()

    # -- applying to a model and its optimizer -----------------------------------------------
    def check(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """The masked parameters of ``model``, after checking names, shapes and devices."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
        params = dict(model.named_parameters())
        unknown = [n for n in self._masks if n not in params]
        if unknown:
            raise ValueError(f"The masks name parameters that `model` ({type(model).__name__}) lacks: {unknown[:5]}.")
        chosen = {}
        for name, mask in self._masks.items():
            p = params[name]
            if p.shape != mask.shape:
                raise ValueError(f"Mask `{name}` has shape {tuple(mask.shape)} but the model's parameter has "
                                 f"{tuple(p.shape)}.")
            if p.device != mask.device:
                raise ValueError(f"Mask `{name}` is on {mask.device} but the parameter on {p.device}: call "
                                 f"`masks.to({str(p.device)!r})` first.")
            chosen[name] = p
        return chosen

    def _inv(self, name: str) -> torch.Tensor:
        inv = self._inverse.get(name)
        if inv is None:
            inv = self._inverse[name] = ~self._masks[name]
        return inv

    @torch.no_grad()
    def apply_(self, model: nn.Module) -> None:
        """Zero the masked weights of ``model`` in place."""
        for name, p in self.check(model).items():
            p.masked_fill_(self._inv(name), 0)

    @torch.no_grad()
    def rescale_fan_in_(self, model: nn.Module) -> None:
        """Scale each output unit's kept weights by ``sqrt(fan_in / kept fan_in)`` (masked ones are zeroed).

        A random mask of density ``d`` shrinks a unit's pre-activation variance by about ``d``; this
        restores the dense initialisation's variance unit by unit (the sparse-aware initialisation of
        Evci et al., "Gradient Flow in Sparse Neural Networks", AAAI 2022). A unit that keeps no
        weight is left at zero.
        """
        for name, p in self.check(model).items():
            mask = self._masks[name]
            kept = mask.flatten(1).sum(1).clamp_min(1).to(p.dtype)  # per output unit
            scale = (mask[0].numel() / kept).sqrt().view(-1, *([1] * (p.dim() - 1)))
            p.mul_(scale).masked_fill_(self._inv(name), 0)

    @torch.no_grad()
    def apply_to_optimizer_(self, optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
        """Zero the masked entries of the optimizer state of each masked parameter, found by identity.

        Every state tensor shaped like its parameter is masked: SGD's ``momentum_buffer``,
        Adam/AdamW's ``exp_avg``, ``exp_avg_sq`` (and ``max_exp_avg_sq``), RMSprop's buffers.
        Scalar entries such as Adam's ``step`` are left alone.
        """
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"`optimizer` must be a torch.optim.Optimizer, got {type(optimizer).__name__}.")
        for name, p in self.check(model).items():
            state = optimizer.state.get(p)
            if not state:
                continue
            for value in state.values():
                if torch.is_tensor(value) and value.shape == p.shape:
                    value.masked_fill_(self._inv(name).to(value.device), 0)

    # -- persistence and devices -------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Boolean tensors keyed ``"<param>_mask"`` (loadable with ``torch.load(weights_only=True)``)."""
        return {f"{n}{SUFFIX}": m.detach().clone() for n, m in self._masks.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Replace every mask from :meth:`state_dict` output; names and shapes must match."""
        masks = _strip(state)
        _check_names(masks, self._masks, "state")
        for name, mask in masks.items():
            self[name] = mask

    def to(self, device: Union[str, torch.device]) -> "Masks":
        """Move every mask to ``device`` in place; returns ``self``."""
        self._masks = {n: m.to(device) for n, m in self._masks.items()}
        self._inverse.clear()
        return self

    def __repr__(self) -> str:
        return f"Masks(layers={len(self)}, nnz={self.nnz()}, density={self.density():.4f})"


def _as_bool(mask: torch.Tensor, name: str) -> torch.Tensor:
    if not torch.is_tensor(mask):
        raise TypeError(f"Mask `{name}` must be a tensor, got {type(mask).__name__}.")
    if mask.dtype == torch.bool:
        return mask.detach()
    if not ((mask == 0) | (mask == 1)).all():
        raise ValueError(f"Mask `{name}` must be boolean or hold only 0 and 1, got dtype {mask.dtype} "
                         f"with other values.")
    return mask.detach() != 0


def _strip(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    bad = [k for k in state if not k.endswith(SUFFIX)]
    if bad:
        raise ValueError(f"Mask state keys must end in {SUFFIX!r} (as Masks.state_dict writes them), got {bad[:5]}.")
    return {k[:-len(SUFFIX)]: v for k, v in state.items()}


def _check_names(given: Mapping, expected: Mapping, what: str, hint: str = "") -> None:
    unknown = [n for n in given if n not in expected]
    missing = [n for n in expected if n not in given]
    if unknown:
        raise ValueError(f"`{what}` names unknown layers {unknown[:5]}; the expected layers are {list(expected)[:10]}.")
    if missing:
        raise ValueError(f"`{what}` lacks the layers {missing[:5]}.{hint}")
