"""Validation during training, shared by every trainer and by the ART runner of the benchmark.

Clean accuracy and the accuracy under PGD-k with Madry's step rule, the PGD run only on points
classified correctly (so it never exceeds clean accuracy), with the training RNG stream isolated:
validating every epoch or never gives identical weights. :class:`BestModel` keeps the weights of
the best validation score (model selection never sees test data).
"""
from __future__ import annotations

import copy
import time
from typing import Optional, Union

import torch
from torch import nn

from art_generalist.attacks import InputSpace, ThreatModel, TrainingAttack, madry_step, predict_labels


def madry_attack(space: InputSpace, norm: Union[str, float, ThreatModel], eps: float,
                 steps: int) -> Optional[TrainingAttack]:
    """PGD-``steps`` with step ``2.5·eps/steps``; ``None`` when ``steps`` is 0."""
    return TrainingAttack(space, norm, eps, madry_step(eps, steps), steps) if steps else None


def robust_accuracy(space: InputSpace, u: torch.Tensor, y: torch.Tensor, attack: Optional[TrainingAttack],
                    batch_size: int = 512) -> tuple[float, float]:
    """(clean, adversarial) accuracy of ``space`` on unit-range data; adversarial only on the
    points classified correctly, so adversarial accuracy never exceeds clean accuracy
    (NaN without an attack)."""
    clean_ok = predict_labels(space, u, batch_size) == y
    if attack is None:
        return clean_ok.float().mean().item(), float("nan")
    adv_ok = clean_ok.clone()
    idx = clean_ok.nonzero().flatten()
    for i in range(0, len(idx), batch_size):
        b = idx[i:i + batch_size]
        adv_ok[b] = predict_labels(space, attack(u[b], y[b]), batch_size) == y[b]
    return clean_ok.float().mean().item(), adv_ok.float().mean().item()


def validate(space: InputSpace, u: torch.Tensor, y: torch.Tensor, norm: Union[str, float, ThreatModel],
             eps: float, steps: int) -> dict:
    """``val_clean_acc``, ``val_pgd_acc`` (``None`` when ``steps`` is 0) and ``val_seconds``;
    the global CPU and CUDA RNG states are restored afterwards."""
    device = u.device
    devices = ([device.index if device.index is not None else torch.cuda.current_device()]
               if device.type == "cuda" else [])
    with torch.random.fork_rng(devices=devices):
        start = time.perf_counter()
        clean, adv = robust_accuracy(space, u, y, madry_attack(space, norm, eps, steps))
        return {"val_clean_acc": clean, "val_pgd_acc": adv if steps else None,
                "val_seconds": time.perf_counter() - start}


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
