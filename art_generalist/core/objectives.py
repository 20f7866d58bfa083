"""Training objectives: each maps a batch to a loss.

An objective declares which inner maximisation it needs (``attack_loss``: ``None`` for clean
training, ``'ce'`` for Madry PGD, ``'kl'`` for TRADES); the engine runs that attack in eval mode,
switches the model to train mode and calls the objective. Models here are
:class:`~art_generalist.core.attack.InputSpace` modules fed unit-range inputs.

Each objective is registered once, with :func:`register_objective`: its ``name`` (and aliases)
for :func:`resolve_objective`, its ``attack_loss`` (a key of
:data:`~art_generalist.core.attack.ATTACK_LOSSES`) and its ``passes``, the forward+backward
passes of the model per training example that the FLOPs accounting counts
(:func:`art_generalist.sparse.report.learner_cost`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, TypeVar, Union

import torch
import torch.nn.functional as F
from torch import nn

from art_generalist.core.attack import ATTACK_LOSSES

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


#: Registered objectives: name or alias (lower case) -> class (see :func:`register_objective`).
OBJECTIVES: dict[str, type["Objective"]] = {}

_O = TypeVar("_O", bound=type)


def register_objective(cls: Optional[_O] = None, *, aliases: tuple[str, ...] = ()) -> Callable[[_O], _O]:
    """Class decorator: make an :class:`Objective` subclass available by its ``name`` (and
    ``aliases``) to :func:`resolve_objective`, the learners, the trainers and the FLOPs accounting.

    The class must declare ``name``, ``attack_loss`` (``None`` or a key of
    :data:`~art_generalist.core.attack.ATTACK_LOSSES`) and ``passes`` itself or through a base
    other than :class:`Objective`: a forgotten pass count would make the FLOPs silently wrong.
    """
    def register(c: _O) -> _O:
        if not (isinstance(c, type) and issubclass(c, Objective)):
            raise TypeError(f"register_objective registers Objective subclasses, got {c!r}.")
        missing = [a for a in ("name", "attack_loss", "passes")
                   if not any(a in vars(k) for k in c.__mro__ if k is not Objective and issubclass(k, Objective))]
        if missing:
            raise TypeError(f"Objective {c.__name__} must declare {', '.join(missing)} to be registered.")
        if c.attack_loss is not None and c.attack_loss not in ATTACK_LOSSES:
            raise ValueError(f"Objective {c.__name__}: unknown attack loss {c.attack_loss!r} "
                             f"(registered: {sorted(ATTACK_LOSSES)}).")
        if isinstance(c.passes, bool) or not isinstance(c.passes, int) or c.passes < 1:
            raise ValueError(f"Objective {c.__name__}: `passes` must be an integer >= 1, got {c.passes!r}.")
        names = [n.lower() for n in (c.name, *aliases)]
        taken = [n for n in names if n in OBJECTIVES and OBJECTIVES[n] is not c]
        if taken or len(set(names)) != len(names):
            raise ValueError(f"Objective name(s) {taken or names} of {c.__name__} are already registered.")
        OBJECTIVES.update(dict.fromkeys(names, c))
        return c
    return register(cls) if cls is not None else register


@dataclass
class ObjectiveOutput:
    """``loss`` to minimise and the ``logits`` on the inputs the learner trains on
    (adversarial for robust objectives), used for training accuracy without an extra pass."""

    loss: torch.Tensor
    logits: torch.Tensor


class Objective:
    """Base class. Subclasses set ``name``, ``attack_loss`` and ``passes`` and implement ``__call__``.

    ``passes``: forward+backward passes of the model per training example (1 when the loss sees
    one batch, 2 when it also runs the clean batch, as TRADES and MART do); the training attack's
    passes are counted apart, from its attack loss. ``uses_loss_fn``: built by name with the ART
    estimator's loss (``cls(loss_fn)``) rather than ``cls()``.
    """

    attack_loss: Optional[str] = None
    name = "objective"
    passes = 1
    uses_loss_fn = False

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 x_adv: Optional[torch.Tensor]) -> ObjectiveOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


@register_objective(aliases=("clean",))
class NaturalCE(Objective):
    """Standard training: ``loss_fn(f(x), y)``."""

    name = "natural"
    attack_loss = None
    passes = 1
    uses_loss_fn = True

    def __init__(self, loss_fn: Optional[LossFn] = None) -> None:
        self.loss_fn = loss_fn or F.cross_entropy

    def __call__(self, model, x, y, x_adv=None):
        logits = model(x)
        return ObjectiveOutput(self.loss_fn(logits, y), logits)


@register_objective(aliases=("ce",))
class AdversarialCE(Objective):
    """Madry PGD adversarial training: ``loss_fn(f(x_adv), y)`` with CE-PGD examples."""

    attack_loss = "ce"
    name = "pgd"
    passes = 1
    uses_loss_fn = True

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


@register_objective
class TRADES(_Regularised):
    """TRADES (Zhang et al., 2019): ``CE(f(x), y) + beta * KL(f(x) || f(x_adv))`` with the
    KL-maximising inner attack, as in yaodongyu/TRADES ``trades_loss``."""

    attack_loss = "kl"
    name = "trades"
    passes = 2  # the clean and the adversarial batch

    def __call__(self, model, x, y, x_adv):
        logits_nat, logits_adv = model(x), model(x_adv)  # separate passes: BatchNorm sees each batch alone
        kl = F.kl_div(F.log_softmax(logits_adv, 1), F.softmax(logits_nat, 1), reduction="batchmean")
        return ObjectiveOutput(F.cross_entropy(logits_nat, y) + self.beta * kl, logits_adv)


@register_objective
class MART(_Regularised):
    """MART (Wang et al., ICLR 2020) with CE-PGD examples, as in YisenWang/MART ``mart_loss``."""

    attack_loss = "ce"
    name = "mart"
    passes = 2  # the clean and the adversarial batch

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


def resolve_objective(value: Union[str, Objective], loss_fn: Optional[LossFn] = None) -> Objective:
    """An :class:`Objective` from an instance or a name (natural, pgd, trades, mart).

    ``loss_fn`` (the ART estimator's loss) is used by the cross-entropy objectives.
    """
    if isinstance(value, Objective):
        return value
    if isinstance(value, str) and value.lower() in OBJECTIVES:
        cls = OBJECTIVES[value.lower()]
        return cls(loss_fn) if cls.uses_loss_fn else cls()
    raise ValueError(f"Unknown objective {value!r}: use one of {sorted(OBJECTIVES)} or an Objective instance.")
