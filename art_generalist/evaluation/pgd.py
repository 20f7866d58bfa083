"""Tensor-native PGD / FGSM for evaluation, with restarts and a per-step loss trace.

Everything runs in unit range ``u ∈ [0, 1]`` on an :class:`~art_generalist.core.attack.InputSpace`
(so ε is already divided by ``hi − lo``). With one restart and the CE loss, :func:`pgd` computes
exactly what ``torchattacks.PGD`` / ``torchattacks.PGDL2`` compute when the global RNG holds the
same seed as our private generator: the same uniform (L∞) or scaled-Gaussian (L2) random start,
the same sign / normalised steps and the same projection. Two additions for evaluation:

* restarts: an example counts as robust only if the *final* iterate of every restart is still
  classified correctly (worst case over restarts, as in Madry et al. 2018,
  https://arxiv.org/abs/1706.06083, and Carlini et al. 2019, https://arxiv.org/abs/1902.06705);
* a loss trace: the mean attack loss and the mean CE at every step (index 0 is the random start,
  index ``steps`` the final iterate), used by the "attack loss rises" integrity check.

The ``"cw"`` loss is the CW∞ margin of Madry's / the Generalist code: ``-relu(z_y − max_{j≠y} z_j
+ κ)`` with κ = 50, i.e. the margin ``max_{j≠y} z_j − z_y`` saturating once the true class trails
by 50 (Carlini & Wagner 2017, https://arxiv.org/abs/1608.04644). The random draws come from a
private :class:`torch.Generator`, so the caller's global RNG is never touched. Under
``torch.distributed`` the batches are shared out across the ranks and the results gathered
(:mod:`art_generalist.parallel.shards`): the same numbers as one process.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from art_generalist.core.attack import ThreatModel, madry_step
from art_generalist.parallel.shards import batch_starts, gather, owns

__all__ = ["AttackRun", "PerturbationStats", "pgd", "fgsm", "perturbation_stats", "cw_loss"]

#: κ of the CW∞ margin loss (as in Madry et al.'s and the Generalist code).
CW_KAPPA = 50.0


def cw_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example CW∞ loss ``-relu(z_y − max_{j≠y} z_j + 50)`` (higher = more adversarial)."""
    correct = logits.gather(1, y[:, None])[:, 0]
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    return -torch.clamp(correct - others.max(1).values + CW_KAPPA, min=0)


def _ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="none")


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {"ce": _ce, "cw": cw_loss}


@dataclass
class PerturbationStats:
    """Largest perturbation norm (unit range), value range of the adversarial inputs, NaN count,
    and the number of (example, step) pairs whose input gradient was not finite: ``sign(NaN) = 0``
    in torch, so NaN gradients silently stall L∞ PGD instead of producing NaN inputs."""

    max_norm: float = 0.0
    min_value: float = float("inf")
    max_value: float = float("-inf")
    n_nan: int = 0
    n_nonfinite_grad: int = 0

    def update(self, u: torch.Tensor, u_adv: torch.Tensor, norm: ThreatModel) -> None:
        self.add(perturbation_stats(u, u_adv, norm))

    def add(self, s: "PerturbationStats") -> None:
        """Fold in the statistics of another batch."""
        nan = math.isnan(self.max_norm) or math.isnan(s.max_norm)
        self.max_norm = float("nan") if nan else max(self.max_norm, s.max_norm)
        self.min_value, self.max_value = min(self.min_value, s.min_value), max(self.max_value, s.max_value)
        self.n_nan += s.n_nan


def perturbation_stats(u: torch.Tensor, u_adv: torch.Tensor, norm: ThreatModel) -> PerturbationStats:
    """:class:`PerturbationStats` of one batch (a NaN anywhere makes ``max_norm`` NaN)."""
    if len(u) == 0:
        return PerturbationStats()
    delta = (u_adv - u).flatten(1)
    size = delta.abs().amax(1) if norm is ThreatModel.LINF else delta.norm(dim=1)
    n_nan = int(torch.isnan(u_adv).sum())
    finite = u_adv[~torch.isnan(u_adv)]
    lo = float(finite.min()) if finite.numel() else float("nan")
    hi = float(finite.max()) if finite.numel() else float("nan")
    return PerturbationStats(float("nan") if n_nan else float(size.max()), lo, hi, n_nan)


@dataclass
class AttackRun:
    """Result of :func:`pgd` on ``m`` examples (all tensors on the attack's device)."""

    robust: torch.Tensor                     #: (m,) bool: correct after every restart
    restart_robust: torch.Tensor             #: (restarts, m) bool: correct after restart r
    loss_trace: list[float]                  #: mean attack loss per step (steps + 1 entries)
    ce_trace: list[float]                    #: mean CE per step (steps + 1 entries)
    stats: PerturbationStats = field(default_factory=PerturbationStats)
    seconds: float = 0.0


def _random_start(u: torch.Tensor, eps: float, norm: ThreatModel, gen: torch.Generator) -> torch.Tensor:
    if norm is ThreatModel.LINF:
        return torch.clamp(u + torch.empty_like(u).uniform_(-eps, eps, generator=gen), 0, 1)
    delta = torch.empty_like(u).normal_(generator=gen)
    n = delta.flatten(1).norm(p=2, dim=1).view(-1, *([1] * (u.dim() - 1)))
    r = torch.zeros_like(n).uniform_(0, 1, generator=gen)
    delta *= r / n * eps
    return torch.clamp(u + delta, 0, 1)


def _step(u: torch.Tensor, adv: torch.Tensor, grad: torch.Tensor, eps: float, alpha: float,
          norm: ThreatModel) -> torch.Tensor:
    shape = (-1, *([1] * (u.dim() - 1)))
    if norm is ThreatModel.LINF:
        adv = adv + alpha * grad.sign()
        return torch.clamp(u + torch.clamp(adv - u, min=-eps, max=eps), 0, 1)
    grad = grad / (grad.flatten(1).norm(p=2, dim=1) + 1e-10).view(shape)
    delta = adv + alpha * grad - u
    norms = delta.flatten(1).norm(p=2, dim=1)
    factor = torch.clamp(eps / norms.clamp_min(1e-12), max=1.0)  # torchattacks: min(eps / ‖δ‖, 1)
    return torch.clamp(u + delta * factor.view(shape), 0, 1)


def _attack_batch(space: nn.Module, u: torch.Tensor, y: torch.Tensor, eps: float, alpha: float, steps: int,
                  norm: ThreatModel, loss_fn: Callable, random_start: bool, gen: torch.Generator,
                  trace: torch.Tensor, ce_trace: torch.Tensor, nonfinite: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """One restart on one batch: (final iterate, final logits); traces and the count of
    non-finite gradients accumulated in place (no host sync inside the loop)."""
    adv = _random_start(u, eps, norm, gen) if random_start else u.clone()
    for t in range(steps):
        adv = adv.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = space(adv)
            losses = loss_fn(logits, y)
            grad = torch.autograd.grad(losses.mean(), adv)[0]
        trace[t] += losses.detach().sum()
        ce_trace[t] += _ce(logits.detach(), y).sum()
        nonfinite += (~torch.isfinite(grad.flatten(1))).any(1).sum()
        adv = _step(u, adv.detach(), grad, eps, alpha, norm)
    with torch.no_grad():
        logits = space(adv)
        trace[steps] += loss_fn(logits, y).sum()
        ce_trace[steps] += _ce(logits, y).sum()
    return adv.detach(), logits


def pgd(space: nn.Module, u: torch.Tensor, y: torch.Tensor, *, eps: float, norm: ThreatModel | str = "inf",
        steps: int = 50, step_size: Optional[float] = None, restarts: int = 1, loss: str = "ce",
        random_start: bool = True, seed: int = 0, batch_size: int = 256, progress: bool = False,
        desc: str = "pgd") -> AttackRun:
    """PGD (Madry et al. 2018) in unit range with ``restarts`` restarts, worst case per example.

    :param space: the model on unit-range inputs, already in eval mode.
    :param u: (m, ...) unit-range inputs on the model's device; ``y``: (m,) index labels.
    :param eps: ε in unit range; ``step_size`` defaults to Madry's ``2.5 · eps / steps``.
    :param loss: ``'ce'`` (cross-entropy) or ``'cw'`` (CW∞ margin, κ = 50).
    :param seed: restart ``r`` draws its random start from a generator seeded with ``seed + r``.
    """
    norm = ThreatModel.parse(norm)
    if loss not in LOSSES:
        raise ValueError(f"Unknown attack `loss` {loss!r}: use 'ce' or 'cw'.")
    steps, restarts = int(steps), int(restarts)
    alpha = madry_step(eps, steps) if step_size is None else float(step_size)
    loss_fn, m, dev = LOSSES[loss], len(u), u.device
    trace = torch.zeros(steps + 1, dtype=torch.float64, device=dev)
    ce_trace = torch.zeros_like(trace)
    nonfinite = torch.zeros((), dtype=torch.int64, device=dev)
    restart_robust = torch.ones(restarts, m, dtype=torch.bool, device=dev)
    start = time.perf_counter()
    starts = batch_starts(m, batch_size)
    n_rows = restarts * len(starts)
    # one row per (restart, batch); filled by the rank that runs the batch (sharding), summed in order
    traces = torch.zeros(n_rows, 2, steps + 1, dtype=torch.float64, device=dev)
    batch_stats = torch.zeros(n_rows, 4, dtype=torch.float64, device=dev)
    nonfinite = torch.zeros(n_rows, dtype=torch.int64, device=dev)
    restart_robust = torch.zeros(restarts, m, dtype=torch.bool, device=dev)
    with tqdm(total=n_rows, desc=desc, disable=not progress, leave=False) as bar:
        for r in range(restarts):
            gen = torch.Generator(device=dev).manual_seed(int(seed) + r)
            for k, i in enumerate(starts):
                row = r * len(starts) + k
                ub, yb = u[i:i + batch_size], y[i:i + batch_size]
                if not owns(row):  # another rank attacks this batch; draw its random start all the same
                    if random_start:
                        _random_start(ub, eps, norm, gen)
                    continue
                adv, logits = _attack_batch(space, ub, yb, eps, alpha, steps, norm, loss_fn, random_start,
                                            gen, traces[row, 0], traces[row, 1], nonfinite[row])
                restart_robust[r, i:i + batch_size] = logits.argmax(1) == yb
                s = perturbation_stats(ub, adv, norm)
                batch_stats[row] = torch.tensor([s.max_norm, s.min_value, s.max_value, s.n_nan], dtype=torch.float64)
                bar.update(1)
    restart_robust, traces = gather(restart_robust), gather(traces)
    batch_stats, nonfinite = gather(batch_stats), gather(nonfinite)
    trace, ce_trace = (torch.zeros(steps + 1, dtype=torch.float64, device=dev) for _ in range(2))
    stats = PerturbationStats()
    for row in range(n_rows):  # in the single-process order, so the sums are the same bits
        trace += traces[row, 0]
        ce_trace += traces[row, 1]
        stats.add(PerturbationStats(*batch_stats[row, :3].tolist(), int(batch_stats[row, 3])))
    denom = max(m * restarts, 1)
    stats.n_nonfinite_grad = int(nonfinite.sum())
    return AttackRun(robust=restart_robust.all(0), restart_robust=restart_robust,
                     loss_trace=(trace / denom).tolist(), ce_trace=(ce_trace / denom).tolist(),
                     stats=stats, seconds=time.perf_counter() - start)


def fgsm(space: nn.Module, u: torch.Tensor, y: torch.Tensor, *, eps: float, norm: ThreatModel | str = "inf",
         batch_size: int = 256, progress: bool = False) -> AttackRun:
    """FGSM (Goodfellow et al. 2015, https://arxiv.org/abs/1412.6572): one CE step of size ε from x
    (for L2 the step is along the normalised gradient)."""
    return pgd(space, u, y, eps=eps, norm=norm, steps=1, step_size=eps, restarts=1, loss="ce",
               random_start=False, batch_size=batch_size, progress=progress, desc="fgsm")
