"""Weight mixing by state-dict key, in the style of timm's ``ModelEmaV3``.

Floating tensors are interpolated; integer and boolean buffers (BatchNorm's
``num_batches_tracked``) and pruning masks (keys ending in ``_mask``) are copied from the
source with the largest weight, never interpolated. Keys and shapes must match exactly.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from art_generalist.core.copies import copy_model
from art_generalist.core.schedules import ema_decay


def _check_compatible(target: dict, source: dict, what: str) -> None:
    if target.keys() != source.keys():
        missing = sorted(set(target) - set(source))
        unexpected = sorted(set(source) - set(target))
        raise ValueError(
            f"Cannot mix {what}: state-dict keys differ (missing in source: {missing[:5]}, "
            f"unexpected in source: {unexpected[:5]})."
        )
    for key, t in target.items():
        if t.shape != source[key].shape:
            raise ValueError(
                f"Cannot mix {what}: `{key}` has shape {tuple(source[key].shape)} in the source "
                f"and {tuple(t.shape)} in the target."
            )


class WeightMixer:
    """Key-wise mixing ``target <- d * target + (1 - d) * sum_i w_i * source_i``.

    :param mix_buffers: interpolate floating buffers (BatchNorm running statistics) like
        weights, as the official code does (``buffer_ema=True``). When False they are copied
        from the source with the largest weight.
    """

    def __init__(self, mix_buffers: bool = True) -> None:
        self.mix_buffers = bool(mix_buffers)
        self._plans: dict[tuple[str, ...], tuple[list[str], list[str]]] = {}

    def _plan(self, module: nn.Module, state: dict) -> tuple[list[str], list[str]]:
        """Split keys into (interpolated, copied); cached per key set."""
        signature = tuple(state)
        if signature not in self._plans:
            params = {name for name, _ in module.named_parameters()}
            mixed, copied = [], []
            for key, tensor in state.items():
                floating = tensor.is_floating_point() or tensor.is_complex()
                is_mask = key.endswith("_mask")
                if floating and not is_mask and (key in params or self.mix_buffers):
                    mixed.append(key)
                else:
                    copied.append(key)
            self._plans[signature] = (mixed, copied)
        return self._plans[signature]

    @torch.no_grad()
    def mix_(self, target: nn.Module, sources: Sequence[nn.Module], weights: Sequence[float],
             decay: float = 0.0) -> None:
        """Mix ``sources`` with convex ``weights`` into ``target`` in place, with EMA ``decay``."""
        if len(sources) != len(weights) or not sources:
            raise ValueError(f"Need one weight per source, got {len(weights)} weights for {len(sources)} sources.")
        weights = [float(w) for w in weights]
        if any(w < 0 for w in weights) or abs(sum(weights) - 1.0) > 1e-6:
            raise ValueError(f"Mixing weights must be non-negative and sum to 1, got {weights}.")
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"`decay` must lie in [0, 1], got {decay}.")
        t_state = target.state_dict()
        s_states = [s.state_dict() for s in sources]
        for i, s_state in enumerate(s_states):
            _check_compatible(t_state, s_state, f"source {i} into target")
        mixed, copied = self._plan(target, t_state)
        if mixed:
            t_list = [t_state[k] for k in mixed]
            if len(sources) == 1:
                torch._foreach_lerp_(t_list, [s_states[0][k] for k in mixed], 1.0 - decay)
            else:
                torch._foreach_mul_(t_list, decay)
                for w, s_state in zip(weights, s_states):
                    if w > 0:
                        torch._foreach_add_(t_list, [s_state[k] for k in mixed], alpha=(1.0 - decay) * w)
        dominant = s_states[max(range(len(weights)), key=weights.__getitem__)]
        for key in copied:
            t_state[key].copy_(dominant[key])

    @torch.no_grad()
    def copy_(self, target: nn.Module, source: nn.Module) -> None:
        """Hard copy of every tensor (the distribution step), keys checked."""
        t_state, s_state = target.state_dict(), source.state_dict()
        _check_compatible(t_state, s_state, "source into target")
        torch._foreach_copy_(list(t_state.values()), [s_state[k] for k in t_state])


class ModelEMA:
    """An EMA copy of a model (a Generalist "teacher", or the global learner).

    ``update(sources, weights)`` performs ``ema <- d_t * ema + (1 - d_t) * sum_i w_i source_i``
    with ``d_t = min(decay, (t+1)/(t+10))`` (warm-up) where ``t`` counts this EMA's updates.
    With ``copy=True`` (teachers) the EMA is a deep copy kept in eval mode with gradients
    disabled; with ``copy=False`` (the global learner, which users keep training or attacking)
    ``model`` itself is updated in place and put in eval mode (it is never trained directly).
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True,
                 mixer: Optional[WeightMixer] = None, copy: bool = True) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"`ema_decay` must lie in [0, 1], got {decay}.")
        self.module = (copy_model(model) if copy else model).eval()
        if copy:
            for p in self.module.parameters():
                p.requires_grad_(False)
        self.decay, self.warmup, self.warmup_k = float(decay), bool(warmup), 10.0
        self.mixer = mixer if mixer is not None else WeightMixer()
        self.num_updates = 0

    def current_decay(self) -> float:
        return ema_decay(self.num_updates, self.decay, self.warmup, self.warmup_k)

    def update(self, sources: nn.Module | Sequence[nn.Module], weights: Optional[Sequence[float]] = None) -> None:
        if isinstance(sources, nn.Module):
            sources = [sources]
        weights = [1.0] if weights is None and len(sources) == 1 else weights
        self.mixer.mix_(self.module, sources, weights, self.current_decay())
        self.num_updates += 1

    def set(self, model: nn.Module) -> None:
        """Hard copy ``model`` into the EMA (does not count as an update)."""
        self.mixer.copy_(self.module, model)
