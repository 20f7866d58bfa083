"""``evaluate``: honest robustness evaluation of an ART ``PyTorchClassifier``.

The data are converted once to unit-range tensors on the device; every attack runs on the raw
model behind :class:`~art_generalist.core.attack.InputSpace` in eval mode, so ε is divided by the
clip range ``hi − lo``. Each attack is run on *every* clean-correct point, which gives its own
robust accuracy (comparable with published numbers, e.g. AutoAttack's); the worst case per
example over all attacks is the reported ``robust_acc`` and ``cumulative_acc`` shows the
AutoAttack-style aggregation in the given order. The integrity checks of
:mod:`art_generalist.evaluation.checks` run alongside (``checks="cheap"`` by default).

Before trusting a number, read Carlini et al. 2019, "On Evaluating Adversarial Robustness"
(https://arxiv.org/abs/1902.06705): passing these checks is necessary, not sufficient; adaptive
attacks (Tramer et al. 2020, https://arxiv.org/abs/2002.08347) remain the evaluator's job.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

import torch

from art_generalist.core.attack import InputSpace, ThreatModel, madry_step, predict_labels
from art_generalist.core.inputs import check_x, check_y
from art_generalist.estimators import check_same_function, clip_range, mean_std
from art_generalist.evaluation import checks as C
from art_generalist.evaluation.autoattack_adapter import AutoAttackAdapter
from art_generalist.evaluation.guard import ModelGuard
from art_generalist.evaluation.pgd import AttackRun, PerturbationStats, fgsm, perturbation_stats, pgd
from art_generalist.evaluation.report import EvaluationReport
from art_generalist.train.options import check_eps_range

if TYPE_CHECKING:  # pragma: no cover
    from art.estimators.classification import PyTorchClassifier

logger = logging.getLogger(__name__)

__all__ = ["evaluate", "ATTACKS"]

ATTACKS = ("pgd", "cw", "fgsm", "autoattack")
_CW_SEED_OFFSET = 1000  # CW restarts draw from seeds independent of PGD's


def _validate(eps: float, attacks: Sequence[str], pgd_steps: int, pgd_restarts: int, batch_size: int,
              checks: Optional[str]) -> tuple[str, ...]:
    if not (isinstance(eps, (int, float)) and eps >= 0):
        raise ValueError(f"`eps` must be a number ≥ 0 in the classifier's input units, got {eps!r}.")
    attacks = (attacks,) if isinstance(attacks, str) else tuple(attacks)
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown or len(set(attacks)) != len(attacks):
        raise ValueError(f"`attacks` must be distinct names from {list(ATTACKS)}, got {list(attacks)}.")
    for name, value in (("pgd_steps", pgd_steps), ("pgd_restarts", pgd_restarts), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"`{name}` must be an integer ≥ 1, got {value!r}.")
    if checks not in (None, "cheap", "all"):
        raise ValueError(f"`checks` must be None, 'cheap' or 'all', got {checks!r}.")
    return attacks


def _device(model: torch.nn.Module, device: Union[str, torch.device, None]) -> torch.device:
    param = next(iter(model.parameters()), None)
    model_dev = param.device if param is not None else torch.device("cpu")
    if device is None:
        return model_dev
    dev = torch.device(device)
    if dev.type != model_dev.type or (dev.index is not None and dev != model_dev):
        raise ValueError(f"`device` {dev} differs from the model's device {model_dev}; move the "
                         f"classifier's model first (evaluation never moves it).")
    return model_dev


class _Run:
    """Shared state of one evaluation: the model, the data and the attack settings."""

    def __init__(self, space: InputSpace, u: torch.Tensor, y: torch.Tensor, eps_u: float, norm: ThreatModel,
                 steps: int, restarts: int, seed: int, batch_size: int, progress: bool) -> None:
        self.space, self.u, self.y, self.eps_u, self.norm = space, u, y, eps_u, norm
        self.steps, self.restarts, self.seed, self.bs, self.progress = steps, restarts, seed, batch_size, progress
        self.n = len(u)
        self.clean_ok = predict_labels(space, u, batch_size, eval_mode=False) == y
        self.idx = self.clean_ok.nonzero().flatten()
        self.eps0_ok: Optional[torch.Tensor] = None  # PGD at ε = 0 on all points (set by the checks)

    def full(self, sub_flags: torch.Tensor) -> torch.Tensor:
        """Flags over all n points from flags over the clean-correct points."""
        out = torch.zeros(self.n, dtype=torch.bool, device=self.u.device)
        out[self.idx] = sub_flags
        return out

    def acc(self, sub_flags: torch.Tensor) -> float:
        return int(sub_flags.sum()) / self.n

    def pgd(self, eps_u: Optional[float] = None, steps: Optional[int] = None, restarts: Optional[int] = None,
            loss: str = "ce", seed: Optional[int] = None, desc: Optional[str] = None) -> AttackRun:
        """PGD on the clean-correct points (defaults: the evaluation's settings)."""
        return pgd(self.space, self.u[self.idx], self.y[self.idx], eps=self.eps_u if eps_u is None else eps_u,
                   norm=self.norm, steps=steps or self.steps, restarts=restarts or self.restarts, loss=loss,
                   seed=self.seed if seed is None else seed, batch_size=self.bs, progress=self.progress,
                   desc=desc or ("pgd" if loss == "ce" else "cw"))


def _run_attack(name: str, run: _Run, aa_version: Union[str, Sequence[str]], n_classes: int
                ) -> tuple[torch.Tensor, dict[str, Any], PerturbationStats, Any]:
    """(flags over clean-correct points, report record, perturbation stats, raw result)."""
    if name in ("pgd", "cw"):
        seed = run.seed + (_CW_SEED_OFFSET if name == "cw" else 0)
        res = run.pgd(loss="ce" if name == "pgd" else "cw", seed=seed)
        extra = {"loss_trace": res.loss_trace, "ce_trace": res.ce_trace,
                 "restart_acc": [run.acc(f) for f in res.restart_robust], "random_start": True, "seed": seed}
        rec = {"steps": run.steps, "restarts": run.restarts, "step_size_unit": madry_step(run.eps_u, run.steps),
               "loss": "ce" if name == "pgd" else "cw", "extra": extra}
        return res.robust, rec, res.stats, res
    if name == "fgsm":
        res = fgsm(run.space, run.u[run.idx], run.y[run.idx], eps=run.eps_u, norm=run.norm, batch_size=run.bs,
                   progress=run.progress)
        rec = {"steps": 1, "restarts": 1, "step_size_unit": run.eps_u, "loss": "ce",
               "extra": {"ce_trace": res.ce_trace}}
        return res.robust, rec, res.stats, res
    adapter = AutoAttackAdapter(run.space, eps=run.eps_u, norm=run.norm, version=aa_version, seed=run.seed,
                                device=run.u.device, n_classes=n_classes)
    u_sub = run.u[run.idx]
    res = adapter.run(u_sub, run.y[run.idx], batch_size=run.bs)
    info = {**adapter.info(), "sub_attacks_run": [r["name"] for r in res.sub_attacks],
            "per_sub_attack": res.sub_attacks}
    rec = {"steps": None, "restarts": None, "loss": None, "extra": info}
    return res.robust, rec, perturbation_stats(u_sub, res.x_adv, run.norm), res


def _cheap_checks(run: _Run, flags: dict[str, torch.Tensor], worst: torch.Tensor,
                  stats: dict[str, PerturbationStats], raw: dict[str, Any], n_classes: int) -> list[C.CheckResult]:
    out = [C.robust_le_clean(run.clean_ok, flags, worst)]
    probe = run.idx[:run.bs] if len(run.idx) else torch.arange(min(run.n, run.bs), device=run.u.device)
    out += C.probe_outputs(run.space, run.u[probe], run.y[probe])
    out.append(C.nonzero_gradients(run.space, run.u[probe], run.y[probe]))
    source = next((a for a in ("pgd", "cw") if a in raw), None)
    if len(run.idx) == 0:
        out.append(C.skipped("loss_rises", "no clean-correct points"))
    else:
        trace = raw[source].ce_trace if source else run.pgd(steps=10, restarts=1, desc="check: loss").ce_trace
        out.append(C.loss_rises(trace, source or "pgd-10"))
    zero = pgd(run.space, run.u, run.y, eps=0.0, norm=run.norm, steps=2, seed=run.seed, batch_size=run.bs)
    run.eps0_ok = zero.robust
    out.append(C.eps_zero(run.clean_ok, zero.robust))
    if "pgd" in flags:
        fg = flags.get("fgsm")
        if fg is None:
            fres = fgsm(run.space, run.u[run.idx], run.y[run.idx], eps=run.eps_u, norm=run.norm, batch_size=run.bs)
            fg, stats = run.full(fres.robust), {**stats, "fgsm(check)": fres.stats}
        out.append(C.pgd_le_fgsm(run.acc(flags["pgd"]), run.acc(fg), run.n))
    else:
        out.append(C.skipped("pgd_le_fgsm", "PGD did not run"))
    out.insert(1, C.perturbation_valid(stats, run.eps_u, run.norm))
    big = torch.arange(min(run.n, run.bs), device=run.u.device)
    large = pgd(run.space, run.u[big], run.y[big], eps=1.0, norm="inf", steps=10, seed=run.seed, batch_size=run.bs)
    out.append(C.large_eps(int(large.robust.sum()) / len(big), n_classes, len(big)))
    aa = raw.get("autoattack")
    out.append(C.square_vs_whitebox(aa.sub_attacks if aa is not None else None, run.n))
    return out


def _expensive_checks(run: _Run, raw: dict[str, Any], eps: float) -> list[C.CheckResult]:
    main = raw["pgd"] if "pgd" in raw else run.pgd(desc="check: pgd")
    zero = run.eps0_ok[run.idx] if run.eps0_ok is not None else run.pgd(eps_u=0.0, desc="check: eps=0").robust
    accs = {0.0: run.acc(zero),
            eps: run.acc(main.robust)}
    for f in (0.5, 2.0):
        accs[f * eps] = run.acc(run.pgd(eps_u=f * run.eps_u, desc=f"check: {f:g}·eps").robust)
    out = [C.monotone_eps(accs, run.n)]
    few = run.acc(run.pgd(steps=10, desc="check: pgd-10").robust) if run.steps > 10 else None
    if run.restarts > 1:
        one, many, r = run.acc(main.restart_robust[0]), run.acc(main.robust), run.restarts
    else:
        one, many, r = run.acc(main.robust), run.acc(run.pgd(restarts=3, desc="check: 3 restarts").robust), 3
    out.append(C.more_iterations(few, run.acc(main.robust), 10, run.steps, one, many, r, run.n))
    return out


def evaluate(classifier: "PyTorchClassifier", x: Any, y: Any, eps: float, norm: Union[str, float] = "inf",
             attacks: Sequence[str] = ("pgd", "cw", "autoattack"), aa_version: Union[str, Sequence[str]] = "standard",
             pgd_steps: int = 50, pgd_restarts: int = 1, seed: int = 0, device: Union[str, torch.device, None] = None,
             batch_size: int = 256, checks: Optional[str] = "cheap", model_name: str = "model",
             progress: bool = True) -> EvaluationReport:
    """Clean and robust accuracy of an ART ``PyTorchClassifier`` with integrity checks.

    :param classifier: ART ``PyTorchClassifier`` with ``clip_values`` (and optional mean/std
        ``preprocessing``); its model is evaluated in eval mode and left unchanged.
    :param x: inputs in the classifier's input units (numpy or torch); ``y``: index or one-hot labels.
    :param eps: ε in the classifier's input units (e.g. 8/255 for (0, 1) clips).
    :param norm: ``'inf'`` or ``2``.
    :param attacks: any of ``'pgd'`` (CE), ``'cw'`` (CW∞ margin), ``'fgsm'``, ``'autoattack'``, in order.
    :param aa_version: ``'standard'``, ``'plus'``, ``'rand'``, ``'fast'`` (APGD-CE + APGD-T),
        ``'apgd-ce'`` or a list of AutoAttack sub-attacks.
    :param pgd_steps: true PGD steps (step size 2.5·ε/steps); ``pgd_restarts``: random restarts.
    :param seed: seeds every attack (private generators; the global RNG is left as it was).
    :param device: must match the model's device (``None``: the model's).
    :param checks: ``'cheap'`` (default), ``'all'`` (adds the expensive checks) or ``None``.
    :param progress: a tqdm bar per attack (on by default, as training's; ``False`` silences them).
    """
    attacks = _validate(eps, attacks, pgd_steps, pgd_restarts, batch_size, checks)
    if "autoattack" in attacks:
        AutoAttackAdapter.parse_version(aa_version)  # fail before any attack runs
    norm_t = ThreatModel.parse(norm)
    lo, hi = clip_range(classifier)
    check_eps_range(float(eps), (lo, hi))  # the 0-255 mix-up, refused as the trainers refuse it
    mean, std = mean_std(classifier)
    model = classifier.model
    dev = _device(model, device)
    xt = check_x(x, classifier.input_shape, (lo, hi))
    yt = check_y(y, len(xt), classifier.nb_classes)
    space = InputSpace(model, (lo, hi), mean, std, processor=getattr(classifier, "processor", None))
    check_same_function(classifier, space)  # the function attacked is the one ART predicts with
    u, yd = space.to_unit(xt.to(dev)).clamp_(0.0, 1.0), yt.to(dev)
    eps_u, n_classes = float(eps) / (hi - lo), int(classifier.nb_classes)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    guard = ModelGuard(model, monitor=checks is not None)
    flags: dict[str, torch.Tensor] = {}
    records: dict[str, dict[str, Any]] = {}
    stats: dict[str, PerturbationStats] = {}
    raw: dict[str, Any] = {}
    results: list[C.CheckResult] = []
    with guard:
        run = _Run(space, u, yd, eps_u, norm_t, pgd_steps, pgd_restarts, seed, batch_size, progress)
        timings["clean"] = time.perf_counter() - start
        worst = run.clean_ok.clone()
        for name in attacks:
            t0 = time.perf_counter()
            sub, rec, stats[name], raw[name] = _run_attack(name, run, aa_version, n_classes)
            flags[name] = run.full(sub)
            worst &= flags[name]
            records[name] = {"acc": run.acc(sub), "cumulative_acc": int(worst.sum()) / run.n,
                             "n_attacked": len(run.idx), **rec, "seconds": time.perf_counter() - t0}
            timings[name] = records[name]["seconds"]
            logger.info("%s: %s accuracy %.4f (cumulative %.4f)", model_name, name, records[name]["acc"],
                        records[name]["cumulative_acc"])
        t0 = time.perf_counter()
        if checks is not None:
            results += _cheap_checks(run, flags, worst, stats, raw, n_classes)
        if checks == "all":
            results += _expensive_checks(run, raw, float(eps))
        timings["checks"] = time.perf_counter() - t0
    if checks is not None:
        results += guard.results()
    timings["total"] = time.perf_counter() - start
    reasons = [f"{c.name}: {c.detail}" for c in results if c.passed is False]
    for reason in reasons:
        logger.warning("%s: integrity check failed: %s", model_name, reason)
    aa = records.get("autoattack", {}).get("extra")
    report = EvaluationReport(
        model_name=model_name, n=run.n, eps=float(eps), eps_unit=eps_u, norm="Linf" if norm_t is ThreatModel.LINF
        else "L2", seed=int(seed), clean_acc=run.acc(run.clean_ok), robust_acc=run.acc(worst), attacks=records,
        autoattack=aa, checks=[c.to_dict() for c in results], reliable=not reasons, unreliable_reasons=reasons,
        per_example={"clean": run.clean_ok.tolist(), "robust": worst.tolist()},
        model_training_on_entry=guard.training_on_entry, timings=timings,
        settings={"attacks": list(attacks), "aa_version": aa_version if isinstance(aa_version, str)
                  else list(aa_version), "pgd_steps": pgd_steps, "pgd_restarts": pgd_restarts,
                  "batch_size": batch_size, "checks": checks, "device": str(dev), "clip_values": [lo, hi],
                  "mean": mean.tolist(), "std": std.tolist(), "nb_classes": n_classes,
                  "input_shape": list(classifier.input_shape)})
    logger.info("%s", report.summary())
    return report
