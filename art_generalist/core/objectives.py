"""Training objectives: each maps a batch to a loss.

An objective declares which inner maximisation it needs (``attack_loss``: ``None`` for clean
training, ``'ce'`` for Madry PGD, ``'kl'`` for TRADES); the engine runs that attack in eval mode,
switches the model to train mode and calls the objective. Models here are
:class:`~art_generalist.core.attack.InputSpace` modules fed unit-range inputs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class ObjectiveOutput:
    """``loss`` to minimise and the ``logits`` on the inputs the learner trains on
    (adversarial for robust objectives), used for training accuracy without an extra pass."""

    loss: torch.Tensor
    logits: torch.Tensor


class Objective:
    """Base class. Subclasses set ``attack_loss`` and implement ``__call__``."""

    attack_loss: Optional[str] = None
    name = "objective"

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 x_adv: Optional[torch.Tensor]) -> ObjectiveOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class NaturalCE(Objective):
    """Standard training: ``loss_fn(f(x), y)``."""

    name = "natural"

    def __init__(self, loss_fn: Optional[LossFn] = None) -> None:
        self.loss_fn = loss_fn or F.cross_entropy

    def __call__(self, model, x, y, x_adv=None):
        logits = model(x)
        return ObjectiveOutput(self.loss_fn(logits, y), logits)


class AdversarialCE(Objective):
    """Madry PGD adversarial training: ``loss_fn(f(x_adv), y)`` with CE-PGD examples."""

    attack_loss = "ce"
    name = "pgd"

    def __init__(self, loss_fn: Optional[LossFn] = None) -> None:
        self.loss_fn = loss_fn or F.cross_entropy

    def __call__(self, model, x, y, x_adv):
        logits = model(x_adv)
        return ObjectiveOutput(self.loss_fn(logits, y), logits)


class _Regularised(Objective):
    """An objective with a robustness weight ``beta`` >= 0."""

    def __init__(self, beta: float = 6.0) -> None:
        if beta < 0:
            raise ValueError(f"{type(self).__name__} `beta` must be >= 0, got {beta}.")
        self.beta = float(beta)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(beta={self.beta})"


class TRADES(_Regularised):
    """TRADES (Zhang et al., 2019): ``CE(f(x), y) + beta * KL(f(x) || f(x_adv))`` with the
    KL-maximising inner attack, as in yaodongyu/TRADES ``trades_loss``."""

    attack_loss = "kl"
    name = "trades"

    def __call__(self, model, x, y, x_adv):
        logits_nat, logits_adv = model(x), model(x_adv)  # separate passes: BatchNorm sees each batch alone
        kl = F.kl_div(F.log_softmax(logits_adv, 1), F.softmax(logits_nat, 1), reduction="batchmean")
        return ObjectiveOutput(F.cross_entropy(logits_nat, y) + self.beta * kl, logits_adv)


class MART(_Regularised):
    """MART (Wang et al., ICLR 2020) with CE-PGD examples, as in YisenWang/MART ``mart_loss``."""

    attack_loss = "ce"
    name = "mart"

    def __call__(self, model, x, y, x_adv):
        logits_nat, logits_adv = model(x), model(x_adv)  # separate passes: BatchNorm sees each batch alone
        adv_probs = F.softmax(logits_adv, 1)
        top2 = adv_probs.argsort(1)[:, -2:]
        wrong = torch.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])
        loss_adv = F.cross_entropy(logits_adv, y) + F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), wrong)
        nat_probs = F.softmax(logits_nat, 1)
        true_probs = nat_probs.gather(1, y.unsqueeze(1)).squeeze(1)
        kl = F.kl_div(torch.log(adv_probs + 1e-12), nat_probs, reduction="none").sum(1)
        loss_robust = (kl * (1.0000001 - true_probs)).mean()
        return ObjectiveOutput(loss_adv + self.beta * loss_robust, logits_adv)


_NAMES = {"natural": NaturalCE, "clean": NaturalCE, "pgd": AdversarialCE, "ce": AdversarialCE,
          "trades": TRADES, "mart": MART}


def resolve_objective(value: Union[str, Objective], loss_fn: Optional[LossFn] = None) -> Objective:
    """An :class:`Objective` from an instance or a name (natural, pgd, trades, mart).

    ``loss_fn`` (the ART estimator's loss) is used by the cross-entropy objectives.
    """
    if isinstance(value, Objective):
        return value
    if isinstance(value, str) and value.lower() in _NAMES:
        cls = _NAMES[value.lower()]
        return cls(loss_fn) if cls in (NaturalCE, AdversarialCE) else cls()
    raise ValueError(f"Unknown objective {value!r}: use one of {sorted(_NAMES)} or an Objective instance.")
