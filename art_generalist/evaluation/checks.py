"""Integrity checks for a robustness evaluation; a failed check makes the report unreliable.

The checks automate the warning signs of Athalye et al. 2018 ("Obfuscated Gradients Give a False
Sense of Security", https://arxiv.org/abs/1802.00420), Carlini et al. 2019 ("On Evaluating
Adversarial Robustness", https://arxiv.org/abs/1902.06705) and AutoAttack's own flags (Croce &
Hein 2020, https://arxiv.org/abs/2003.01690, ``checks.py``), turning them into pass / fail
results. Each is a small function of results already computed (so each is unit-testable);
:func:`art_generalist.evaluation.evaluate` runs whatever extra attacks a check needs.

Cheap (``checks="cheap"``, the default; free or a few extra passes over at most ``batch_size``
points or a 1–2-step attack):

=====================  ===========================================================================
``robust_le_clean``    per example: no attack and not the worst case is correct where clean is wrong
``perturbation_valid`` ‖x_adv − x‖ ≤ ε + 1e-6, x_adv in the clip range, no NaN (inputs or gradients)
``deterministic``      5 forward passes on one batch: L2-normalised logits within 1e-4, same labels
``logits_not_probs``   outputs are not rows in [0, 1] summing to 1 (softmax output masks gradients)
``nonzero_gradients``  the CE input gradient at the clean points is non-zero and finite everywhere
``eval_mode``          every forward pass during the evaluation ran in eval mode (hooks)
``state_unchanged``    parameters and buffers bit-identical before and after the evaluation
``loss_rises``         mean CE at the last PGD step > at step 0 (the attack optimises)
``eps_zero``           PGD with ε = 0 (2 steps) on all points reproduces every clean prediction
``pgd_le_fgsm``        PGD accuracy ≤ FGSM accuracy + tolerance (iterative beats single-step)
``large_eps``          PGD-10, L∞ ε = 1 (unit range), one batch: accuracy ≤ 1/K + 0.05
``square_vs_whitebox`` Square breaks at most 0.2 % of the points the white-box AA attacks left
                       (AutoAttack's ``check_square_sr``; only when Square ran)
=====================  ===========================================================================

Expensive (added by ``checks="all"``; full extra attack runs):

=====================  ===========================================================================
``monotone_eps``       PGD at ε·{0, 0.5, 1, 2}: accuracy never rises with ε (tolerance 1/n)
``more_iterations``    PGD-``pgd_steps`` ≤ PGD-10 and R restarts ≤ 1 restart (R = ``pgd_restarts``,
                       3 if that is 1), both + tolerance: more effort never helps the model
=====================  ===========================================================================

"Tolerance" is :func:`noise_tolerance` ``= max(1/n, 0.002)`` unless stated. A check that does not
apply (e.g. Square did not run) is reported with ``passed=None`` and does not affect reliability.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from art_generalist.core.attack import ThreatModel

__all__ = ["CheckResult", "CHEAP_CHECKS", "EXPENSIVE_CHECKS", "noise_tolerance", "robust_le_clean",
           "perturbation_valid", "probe_outputs", "nonzero_gradients", "loss_rises", "eps_zero", "pgd_le_fgsm",
           "large_eps", "square_vs_whitebox", "monotone_eps", "more_iterations"]

CHEAP_CHECKS = ("robust_le_clean", "perturbation_valid", "deterministic", "logits_not_probs", "nonzero_gradients",
                "eval_mode", "state_unchanged", "loss_rises", "eps_zero", "pgd_le_fgsm", "large_eps",
                "square_vs_whitebox")
EXPENSIVE_CHECKS = ("monotone_eps", "more_iterations")
LARGE_EPS_SLACK = 0.05
SQUARE_ALPHA = 0.002


@dataclass
class CheckResult:
    """One check: ``passed`` is True / False, or None when the check did not apply."""

    name: str
    passed: Optional[bool]
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def noise_tolerance(n: int) -> float:
    """Tolerance for comparing two attack accuracies on ``n`` points: one point or 0.2 %."""
    return max(1.0 / max(n, 1), 0.002)


def skipped(name: str, why: str) -> CheckResult:
    return CheckResult(name, None, f"skipped: {why}")


def robust_le_clean(clean_ok: torch.Tensor, flags: Mapping[str, torch.Tensor], worst: torch.Tensor) -> CheckResult:
    """Per example: each attack's and the worst-case flag imply the clean flag; worst ≤ each attack."""
    bad = {name: int((f & ~clean_ok).sum()) for name, f in {**flags, "worst_case": worst}.items()}
    bad.update({f"worst>{name}": int((worst & ~f).sum()) for name, f in flags.items()})
    bad = {k: v for k, v in bad.items() if v}
    return CheckResult("robust_le_clean", not bad, "robust ⊆ clean for every attack and the worst case"
                       if not bad else f"examples robust but not clean-correct: {bad}")


def perturbation_valid(stats: Mapping[str, Any], eps_unit: float, norm: ThreatModel,
                       clip: tuple[float, float] = (0.0, 1.0)) -> CheckResult:
    """``stats``: name -> :class:`~art_generalist.evaluation.pgd.PerturbationStats` (unit range)."""
    problems = []
    for name, s in stats.items():
        if s.n_nan or math.isnan(s.max_norm):
            problems.append(f"{name}: {s.n_nan} NaN values")
        if getattr(s, "n_nonfinite_grad", 0):
            problems.append(f"{name}: non-finite input gradients at {s.n_nonfinite_grad} (example, step) pairs")
        elif s.max_norm > eps_unit + 1e-6:
            problems.append(f"{name}: max {norm.value} perturbation {s.max_norm:.6g} > ε {eps_unit:.6g}")
        if s.min_value < clip[0] - 1e-6 or s.max_value > clip[1] + 1e-6:
            problems.append(f"{name}: values in [{s.min_value:.6g}, {s.max_value:.6g}] outside {clip}")
    worst = max((s.max_norm for s in stats.values()), default=0.0)
    return CheckResult("perturbation_valid", not problems, "; ".join(problems) if problems else
                       f"max {norm.value} perturbation {worst:.6g} ≤ ε {eps_unit:.6g} (unit range), in range, no NaN")


@torch.no_grad()
def probe_outputs(space: nn.Module, u: torch.Tensor, y: torch.Tensor, repeats: int = 5,
                  alpha: float = 1e-4) -> list[CheckResult]:
    """``deterministic`` and ``logits_not_probs`` on one batch (AutoAttack's ``check_randomized``
    and ``check_range_output``)."""
    outs = [space(u).float() for _ in range(repeats)]
    normed = [o / (o.norm(dim=1, keepdim=True) + 1e-10) for o in outs]
    diff = max((normed[0] - o).norm(dim=1).max().item() for o in normed[1:])
    raw = max((outs[0] - o).abs().max().item() for o in outs[1:])
    labels = [int((o.argmax(1) == y).sum()) for o in outs]
    det_ok = diff <= alpha and len(set(labels)) == 1
    det = CheckResult("deterministic", det_ok, f"{repeats} passes on {len(u)} points: max normalised logit "
                      f"difference {diff:.3g} (≤ {alpha:g} required), max raw {raw:.3g}, correct counts {labels}")
    o = outs[0]
    probs = bool(o.max() < 1 + 1e-5 and o.min() > -1e-5 and ((o.sum(1) - 1).abs() < 1e-5).all())
    logits = CheckResult("logits_not_probs", not probs, "outputs look like probabilities (rows in [0, 1] "
                         "summing to 1): attack the logits" if probs else
                         f"outputs are logits (range [{o.min().item():.3g}, {o.max().item():.3g}])")
    return [det, logits]


def nonzero_gradients(space: nn.Module, u: torch.Tensor, y: torch.Tensor) -> CheckResult:
    """The CE input gradient at ``u`` is finite and non-zero for every point (AutoAttack's
    ``check_zero_gradients``; zero gradients mean gradient masking, Athalye et al. 2018)."""
    x = u.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(space(x), y, reduction="sum")
        grad = torch.autograd.grad(loss, x)[0]
    per_point = grad.flatten(1).abs().sum(1)
    zero, nonfinite = int((per_point == 0).sum()), int((~torch.isfinite(per_point)).sum())
    ok = zero == 0 and nonfinite == 0
    return CheckResult("nonzero_gradients", ok, f"{zero} of {len(u)} points with an all-zero input gradient, "
                       f"{nonfinite} non-finite; mean |grad|₁ {per_point[torch.isfinite(per_point)].mean().item():.3g}")


def loss_rises(ce_trace: Optional[Sequence[float]], attack: str = "pgd") -> CheckResult:
    """Mean CE at the last step > at step 0 (the random start): the attack optimises."""
    if not ce_trace or len(ce_trace) < 2:
        return skipped("loss_rises", "no PGD run on clean-correct points")
    first, last = ce_trace[0], ce_trace[-1]
    ok = last > first
    return CheckResult("loss_rises", ok, f"{attack}: mean CE {first:.4g} at step 0 -> {last:.4g} at step "
                       f"{len(ce_trace) - 1}" + ("" if ok else " (the attack does not increase its loss)"))


def eps_zero(clean_ok: torch.Tensor, eps0_ok: torch.Tensor) -> CheckResult:
    """PGD at ε = 0 (run on all points) must reproduce every clean result, hence the clean accuracy."""
    flips = int((clean_ok != eps0_ok).sum())
    clean, zero = clean_ok.float().mean().item(), eps0_ok.float().mean().item()
    return CheckResult("eps_zero", flips == 0, f"accuracy at ε = 0: {zero:.4f} vs clean {clean:.4f}; "
                       f"{flips} examples changed correctness")


def pgd_le_fgsm(acc_pgd: float, acc_fgsm: float, n: int) -> CheckResult:
    tol = noise_tolerance(n)
    ok = acc_pgd <= acc_fgsm + tol
    return CheckResult("pgd_le_fgsm", ok, f"PGD {acc_pgd:.4f} vs FGSM {acc_fgsm:.4f} (tolerance {tol:.4f})"
                       + ("" if ok else ": the single-step attack is stronger than the iterative one"))


def large_eps(acc: float, n_classes: int, n: int, slack: float = LARGE_EPS_SLACK) -> CheckResult:
    bound = 1.0 / n_classes + slack
    ok = acc <= bound
    return CheckResult("large_eps", ok, f"PGD-10 at L∞ ε = 1 (unit range) on {n} points: accuracy {acc:.4f} "
                       f"(≤ 1/K + {slack:g} = {bound:.4f} required)")


def square_vs_whitebox(sub_attacks: Optional[Sequence[Mapping[str, Any]]], n: int,
                       alpha: float = SQUARE_ALPHA) -> CheckResult:
    """Square (black-box) must not break more than ``alpha`` of all points that the white-box
    AutoAttack sub-attacks run before it left robust."""
    names = [r["name"] for r in sub_attacks or []]
    if "square" not in names or names.index("square") == 0:
        return skipped("square_vs_whitebox", "Square did not run after a white-box attack")
    rec = next(r for r in sub_attacks if r["name"] == "square")
    frac = rec["n_broken"] / max(n, 1)
    ok = frac <= alpha
    return CheckResult("square_vs_whitebox", ok, f"Square broke {rec['n_broken']} of {n} points ({frac:.2%}) "
                       f"that the white-box attacks left robust (≤ {alpha:.1%} allowed)")


def monotone_eps(accs: Mapping[float, float], n: int) -> CheckResult:
    """Accuracy must not rise with ε (tolerance 1/n); ``accs``: ε (input units) -> accuracy."""
    tol = 1.0 / max(n, 1)
    items = sorted(accs.items())
    rises = [(a, b) for (_, a), (_, b) in zip(items, items[1:]) if b > a + tol]
    text = ", ".join(f"ε={e:.4g}: {a:.4f}" for e, a in items)
    return CheckResult("monotone_eps", not rises, text + ("" if not rises else "; accuracy rises with ε"))


def more_iterations(acc_few_steps: Optional[float], acc_many_steps: float, few: int, many: int,
                    acc_one_restart: Optional[float], acc_restarts: Optional[float], restarts: int,
                    n: int) -> CheckResult:
    """More steps or restarts must not raise accuracy (+ tolerance)."""
    tol, parts, ok = noise_tolerance(n), [], True
    if acc_few_steps is not None:
        ok &= acc_many_steps <= acc_few_steps + tol
        parts.append(f"PGD-{many} {acc_many_steps:.4f} vs PGD-{few} {acc_few_steps:.4f}")
    if acc_one_restart is not None and acc_restarts is not None:
        ok &= acc_restarts <= acc_one_restart + tol
        parts.append(f"{restarts} restarts {acc_restarts:.4f} vs 1 restart {acc_one_restart:.4f}")
    if not parts:
        return skipped("more_iterations", "nothing to compare")
    return CheckResult("more_iterations", bool(ok), "; ".join(parts) + f" (tolerance {tol:.4f})")
