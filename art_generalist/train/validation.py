"""Validation during training, shared by every trainer and by the ART runner of the benchmark.

Clean accuracy and the accuracy under PGD-k with Madry's step rule, the PGD run only on points
classified correctly (so it never exceeds clean accuracy), with the training RNG stream isolated:
validating every epoch or never gives identical weights. The validation PGD loss is the mean
cross-entropy of the model on those PGD examples (Flying Bird+ watches its trend).
:class:`BestModel` keeps the weights of the best validation score (model selection never sees
test data).
"""
from __future__ import annotations

import copy
import math
import time
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from art_generalist.core.attack import InputSpace, ThreatModel, TrainingAttack, madry_step, predict_labels
from art_generalist.parallel.shards import batch_starts, gather, owns
from art_generalist.train.feed import sharded_attack
from art_generalist.train.plugins import Plugin


def madry_attack(space: InputSpace, norm: Union[str, float, ThreatModel], eps: float,
                 steps: int) -> Optional[TrainingAttack]:
    """PGD-``steps`` with step ``2.5·eps/steps``; ``None`` when ``steps`` is 0."""
    return sharded_attack(space, norm, eps, madry_step(eps, steps), steps) if steps else None


@torch.no_grad()
def _eval_logits(space: nn.Module, u: torch.Tensor) -> torch.Tensor:
    """Logits of ``space`` in eval mode (its mode restored), the pass :func:`predict_labels` makes."""
    was_training = getattr(space, "model", space).training
    space.eval()
    try:
        return space(u)
    finally:
        space.train(was_training)


def robust_flags(space: InputSpace, u: torch.Tensor, y: torch.Tensor, attack: Optional[TrainingAttack],
                 batch_size: int = 512) -> tuple[torch.Tensor, Optional[torch.Tensor], float]:
    """Per-example clean and adversarial correctness of ``space`` on unit-range data, and the
    adversarial loss.

    The attack runs only on the points classified correctly, so a point is adversarially correct
    only if it is clean-correct; the adversarial loss is the mean cross-entropy on those points'
    PGD examples (NaN when no point is classified correctly). Without an attack the adversarial
    flags are ``None`` and the loss NaN.
    """
    clean_ok = predict_labels(space, u, batch_size) == y
    if attack is None:
        return clean_ok, None, float("nan")
    idx = clean_ok.nonzero().flatten()
    adv_ok = torch.zeros_like(clean_ok)
    starts = batch_starts(len(idx), batch_size)
    losses = torch.zeros(len(starts), dtype=torch.float64, device=u.device)  # per batch, summed in order
    for k, i in enumerate(starts):
        b = idx[i:i + batch_size]
        if not owns(k):  # another rank attacks this batch (torch.distributed); its random start is drawn here too
            attack.skip(u[b], y[b])
            continue
        logits = _eval_logits(space, attack(u[b], y[b]))
        adv_ok[b] = logits.argmax(1) == y[b]
        losses[k] = F.cross_entropy(logits.float(), y[b], reduction="sum").double()
    adv_ok, losses = gather(adv_ok), gather(losses)
    loss_sum = torch.zeros((), dtype=torch.float64, device=u.device)
    for value in losses:
        loss_sum += value
    return clean_ok, adv_ok, loss_sum.item() / len(idx) if len(idx) else math.nan


def robust_scores(space: InputSpace, u: torch.Tensor, y: torch.Tensor, attack: Optional[TrainingAttack],
                  batch_size: int = 512) -> tuple[float, float, float]:
    """(clean accuracy, adversarial accuracy, adversarial loss): the means of :func:`robust_flags`
    (adversarial accuracy and loss NaN without an attack)."""
    clean_ok, adv_ok, loss = robust_flags(space, u, y, attack, batch_size)
    adv = adv_ok.float().mean().item() if adv_ok is not None else float("nan")
    return clean_ok.float().mean().item(), adv, loss


def robust_accuracy(space: InputSpace, u: torch.Tensor, y: torch.Tensor, attack: Optional[TrainingAttack],
                    batch_size: int = 512) -> tuple[float, float]:
    """(clean, adversarial) accuracy of ``space`` on unit-range data (see :func:`robust_scores`;
    adversarial accuracy is NaN without an attack)."""
    clean, adv, _ = robust_scores(space, u, y, attack, batch_size)
    return clean, adv


def validate(space: InputSpace, u: torch.Tensor, y: torch.Tensor, norm: Union[str, float, ThreatModel],
             eps: float, steps: int) -> dict:
    """``val_clean_acc``, ``val_pgd_acc``, ``val_pgd_loss`` (both ``None`` when ``steps`` is 0) and
    ``val_seconds``; the global CPU and CUDA RNG states are restored afterwards.

    ``val_pgd_loss`` is the mean cross-entropy of the model on the PGD examples of the validation
    points it classifies correctly (the points ``val_pgd_acc`` attacks; NaN if there are none).
    """
    device = u.device
    devices = ([device.index if device.index is not None else torch.cuda.current_device()]
               if device.type == "cuda" else [])
    with torch.random.fork_rng(devices=devices):
        start = time.perf_counter()
        clean, adv, loss = robust_scores(space, u, y, madry_attack(space, norm, eps, steps))
        return {"val_clean_acc": clean, "val_pgd_acc": adv if steps else None,
                "val_pgd_loss": loss if steps else None, "val_seconds": time.perf_counter() - start}


def score(record: dict) -> float:
    """The model-selection score of a validated epoch: clean + PGD accuracy."""
    return record["val_clean_acc"] + (record["val_pgd_acc"] or 0.0)


class BestModel:
    """The weights of the epoch with the best validation score so far."""

    def __init__(self) -> None:
        self.score: Optional[float] = None
        self.state: Optional[dict] = None

    def offer(self, value: float, model: nn.Module) -> bool:
        """Keep ``model``'s weights if ``value`` beats the best score; returns whether it did."""
        if self.score is not None and value <= self.score:
            return False
        self.score, self.state = value, copy.deepcopy(model.state_dict())
        return True

    def restore(self, model: nn.Module) -> bool:
        """Load the kept weights into ``model``; returns whether there were any."""
        if self.state is None:
            return False
        model.load_state_dict(self.state)
        return True


class TrackBest(Plugin):
    """Keeps the weights of the epoch with the best validation robust accuracy, without restoring them.

    The model a trainer ships stays the final one (``restore_best`` is the option that ships the
    best); this plug-in only remembers the best epoch's weights (:attr:`state`, :attr:`epoch`),
    for "best vs final" comparisons such as robust overfitting. Ties keep the earlier epoch. Its
    state joins checkpoints, so a resumed run keeps the best of the epochs before the restart.
    Put it before plug-ins whose ``after_epoch`` changes weights (a sparsity plug-in): it must see
    the weights that were validated.

    :param key: the record entry compared (default ``"val_pgd_acc"``, the validation PGD accuracy).
    """

    name = "track_best"

    def __init__(self, key: str = "val_pgd_acc") -> None:
        self.key = key
        self.best = BestModel()
        self.epoch: Optional[int] = None

    @property
    def state(self) -> Optional[dict]:
        """The kept weights (a ``state_dict``), or ``None`` before the first validated epoch."""
        return self.best.state

    def after_epoch(self, trainer, record: dict) -> None:
        self.offer(record, trainer.global_space.model)

    def offer(self, record: dict, model: nn.Module) -> bool:
        """Keep ``model``'s weights if ``record[key]`` is the best so far; marks ``record["best_tracked"]``."""
        value = record.get(self.key)
        if value is None:
            raise ValueError(f"TrackBest needs `{self.key}` in every epoch's record: train with "
                             f"`validation_data` and `val_max_iter >= 1`.")
        if not self.best.offer(float(value), model):
            return False
        self.epoch = record["epoch"]
        record["best_tracked"] = True
        return True

    def state_dict(self) -> dict:
        return {"score": self.best.score, "epoch": self.epoch, "state": self.best.state}

    def load_state_dict(self, state: dict) -> None:
        self.best.score, self.epoch, self.best.state = state["score"], state["epoch"], state["state"]
