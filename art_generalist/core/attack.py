"""The training attack: torchattacks PGD run against the estimator's own input pipeline.

torchattacks clamps to [0, 1] and attacks ``model(x)`` directly. ART estimators instead take
inputs within ``clip_values`` and normalise them with ``preprocessing``. :class:`InputSpace`
bridges the two: it maps unit-range inputs ``u`` to ``lo + (hi - lo) * u``, normalises them and
calls the raw model, so torchattacks sees exactly the function ART's classifier computes, and
ε given in ART's input units becomes ``eps / (hi - lo)`` in unit range.
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
import torch
import torchattacks
from torch import nn


class ThreatModel(str, enum.Enum):
    """L∞ or L2 threat model; parse with :meth:`parse` (accepts ``'inf'``, ``np.inf``, ``2`` ...)."""

    LINF = "linf"
    L2 = "l2"

    @classmethod
    def parse(cls, value: Union[str, float, int, "ThreatModel"]) -> "ThreatModel":
        if isinstance(value, ThreatModel):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if math.isinf(value):
                return cls.LINF
            if value == 2:
                return cls.L2
        if isinstance(value, str) and value.lower() in {"inf", "linf", "l_inf", "np.inf"}:
            return cls.LINF
        if isinstance(value, str) and value.lower() in {"2", "l2"}:
            return cls.L2
        raise ValueError(f"Unsupported `norm` {value!r}: use 'inf' (L∞) or 2 (L2).")


class InputSpace(nn.Module):
    """``u in [0, 1]`` -> ``model(processor((lo + (hi - lo) * u - mean) / std))``.

    :param mean, std: scalars, per-channel ``(C,)`` statistics of channels-first images, or
        arrays that broadcast against one example (see :func:`art_generalist.estimators.mean_std`).
    :param processor: the ``processor`` of an ART ``HuggingFaceClassifierPyTorch`` (applied after
        the standardisation, as ART does), or ``None``.
    :param amp: run the model under bf16 autocast (logits returned in float32).
    :param channels_last: feed 4-D inputs in channels_last memory format.
    """

    def __init__(self, model: nn.Module, clip_values: Sequence[float], mean, std,
                 amp: bool = False, channels_last: bool = False, processor: Optional[Any] = None) -> None:
        super().__init__()
        self.model = model
        lo, hi = float(clip_values[0]), float(clip_values[1])
        self.lo, self.scale = lo, hi - lo
        device = next(model.parameters()).device
        self.register_buffer("mean", _broadcastable(mean, device), persistent=False)
        self.register_buffer("std", _broadcastable(std, device), persistent=False)
        self.amp, self.channels_last = bool(amp), bool(channels_last)
        self.processor = processor
        self.train(model.training)  # mirror the wrapped model's mode (nn.Module defaults to train)

    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.lo) / self.scale

    def from_unit(self, u: torch.Tensor) -> torch.Tensor:
        return u * self.scale + self.lo

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        x = (self.from_unit(u) - self.mean) / self.std
        if self.processor is not None:
            x = self.processor(x)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.amp:
            with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16):
                return self.model(x).float()
        return self.model(x)


def _broadcastable(value, device: torch.device) -> torch.Tensor:
    """A scalar, flat per-channel statistics shaped (C, 1, 1), or an array kept in its own shape."""
    t = torch.as_tensor(np.asarray(value, dtype=np.float32), device=device)
    if t.numel() == 1:
        return t.reshape(())
    return t.reshape(-1, 1, 1) if t.dim() == 1 else t


#: A torchattacks constructor: (space, eps, alpha, steps, random_start) -> attack, in unit range.
AttackFactory = Callable[[nn.Module, float, float, int, bool], Any]


@dataclass(frozen=True)
class AttackLoss:
    """How the training attack maximises one attack loss: a torchattacks constructor per threat
    model (a threat model without one is refused with ``unavailable``), and ``clean_forwards``,
    the extra forward passes per example beyond the steps (TRADES' KL attack needs the clean
    logits once), counted by the FLOPs accounting."""

    attacks: Mapping[ThreatModel, AttackFactory]
    unavailable: str = ""
    clean_forwards: int = 0


#: Attack losses by name (an objective's ``attack_loss``): register a new one here.
ATTACK_LOSSES: dict[str, AttackLoss] = {
    "ce": AttackLoss({  # Madry PGD on the cross-entropy
        ThreatModel.LINF: lambda space, eps, alpha, steps, rs: torchattacks.PGD(
            space, eps=eps, alpha=alpha, steps=steps, random_start=rs),
        ThreatModel.L2: lambda space, eps, alpha, steps, rs: torchattacks.PGDL2(
            space, eps=eps, alpha=alpha, steps=steps, random_start=rs),
    }),
    "kl": AttackLoss({  # TRADES' maximisation of KL(f(x) || f(x'))
        ThreatModel.LINF: lambda space, eps, alpha, steps, rs: torchattacks.TPGD(
            space, eps=eps, alpha=alpha, steps=steps),
    }, unavailable="The TRADES (KL) training attack is available for the L∞ threat model only.", clean_forwards=1),
}


class TrainingAttack:
    """PGD from torchattacks on an :class:`InputSpace`, with ε and step in ART's input units.

    :param loss: a key of :data:`ATTACK_LOSSES`: ``'ce'`` (Madry PGD; ``torchattacks.PGD`` /
        ``PGDL2``) or ``'kl'`` (TRADES' inner maximisation of KL(f(x) || f(x'));
        ``torchattacks.TPGD``, L∞ only).
    :param draws: wraps the torchattacks call around its random draws (the trainers pass
        :func:`art_generalist.parallel.draws.sharded`, so that under ``torch.distributed`` each
        rank draws its slice of the global batch's random start); ``None`` calls it as it is.
    Calling the attack puts the model in eval mode and restores its mode afterwards.
    """

    def __init__(self, space: InputSpace, norm: Union[str, float, ThreatModel], eps: float,
                 eps_step: float, max_iter: int, loss: str = "ce", random_start: bool = True,
                 draws: Optional[Callable[[Callable], Callable]] = None) -> None:
        self.draws = draws if draws is not None else _as_is
        self.space, self.norm = space, ThreatModel.parse(norm)
        self.eps, self.eps_step, self.max_iter, self.loss = float(eps), float(eps_step), int(max_iter), loss
        self.random_start = bool(random_start)
        self._attack = self._torchattack(self.max_iter)
        self._draws_only: Optional[Any] = None

    def _torchattack(self, steps: int) -> Any:
        eps_u, step_u = self.eps / self.space.scale, self.eps_step / self.space.scale
        entry = ATTACK_LOSSES.get(self.loss) if isinstance(self.loss, str) else None
        if entry is None:
            raise ValueError(f"Unknown attack loss {self.loss!r}: use {' or '.join(map(repr, ATTACK_LOSSES))}.")
        make = entry.attacks.get(self.norm)
        if make is None:
            raise ValueError(entry.unavailable or f"The {self.loss!r} training attack has no {self.norm.value} "
                                                  f"threat model.")
        return make(self.space, eps_u, step_u, steps, self.random_start)

    def __call__(self, u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Adversarial examples for unit-range inputs ``u`` and index labels ``y``."""
        if self.eps == 0 or self.max_iter == 0:
            return u
        return self.draws(self._attack)(u, y)

    def skip(self, u: torch.Tensor, y: torch.Tensor) -> None:
        """Consume the random draws that ``self(u, y)`` would, without attacking: the random
        start only (the same torchattacks attack with 0 steps). For the batches another rank
        attacks (:mod:`art_generalist.parallel.shards`)."""
        if self.eps == 0 or self.max_iter == 0:
            return
        if self._draws_only is None:
            self._draws_only = self._torchattack(0)
        self.draws(self._draws_only)(u, y)

    def __repr__(self) -> str:
        return (f"TrainingAttack(norm={self.norm.value}, eps={self.eps}, eps_step={self.eps_step}, "
                f"max_iter={self.max_iter}, loss={self.loss!r})")


def _as_is(fn: Callable) -> Callable:
    return fn


def madry_step(eps: float, steps: int) -> float:
    """Madry et al.'s PGD step rule, ``2.5 · eps / steps``: the step of every evaluation and
    validation PGD of the package (and of the benchmark's default training PGD)."""
    return 2.5 * eps / steps


@torch.no_grad()
def predict_labels(space: nn.Module, u: torch.Tensor, batch_size: int = 512, eval_mode: bool = True) -> torch.Tensor:
    """Argmax predictions of ``space`` for unit-range inputs, in batches.

    With ``eval_mode`` the model is put in eval mode and its mode restored afterwards; without
    it the caller has set the mode (evaluation, which watches the mode, does).
    """
    if len(u) == 0:
        return torch.zeros(0, dtype=torch.int64, device=u.device)
    if not eval_mode:
        return torch.cat([space(u[i:i + batch_size]).argmax(1) for i in range(0, len(u), batch_size)])
    was_training = getattr(space, "model", space).training
    space.eval()
    try:
        return predict_labels(space, u, batch_size, eval_mode=False)
    finally:
        space.train(was_training)
