"""Sparse adversarial training in the benchmark, and the paper's metrics ("Sparsity Winning Twice").

Methods: ``robust_bird@D``, ``flying_bird@D`` and ``flying_bird_plus@D`` are single-learner PGD-AT
with the plug-in of :mod:`art_generalist.sparse` at density ``D`` (0.2 when no knob is given);
``generalist+flying_bird@D`` is :class:`~art_generalist.GeneralistTrainer` with Flying Bird.

With ``paper_metrics`` every method trains with a :class:`~art_generalist.train.validation.TrackBest`
(the weights of the best validation PGD accuracy are kept, never restored: the final model stays
the shipped one) and is reported in the paper's columns, on the same test points:

* robust accuracy (PGD, and AutoAttack as configured) and clean accuracy of the best and of the
  final model, and best − final (robust overfitting);
* the robust generalization gap at the final epoch: PGD accuracy of the final, trained model on a
  fixed subset of ``n_eval`` training points minus its PGD accuracy on the test points (the
  official code measured it on a freshly initialised model);
* training FLOPs (sparse; dense methods are counted on the dense model, masks=None, with the
  examples actually seen) and per-example inference FLOPs, from
  :class:`~art_generalist.sparse.SparseFlops`; validation and evaluation are not counted.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from art_generalist.benchmark.art_runner import ARTTrainerRun
from art_generalist.methods import registry
from art_generalist.sparse import RobustBird, SparseFlops
from art_generalist.sparse.report import learner_cost
from art_generalist.train.validation import TrackBest

#: sparse family -> its plug-in class, from the method registry's benchmark methods
PLUGINS = {m.name: m.sparsity for m in registry.methods() if m.benchmark and m.sparsity is not None}
FAMILIES = tuple(PLUGINS)
DEFAULT_DENSITY = 0.2


def check_config(cfg: Any) -> None:
    """Refuse settings the sparse methods and the paper's metrics cannot run with."""
    if cfg.n_val < 1 and cfg.paper_metrics:
        raise ValueError("`paper_metrics` selects the best epoch on validation data: set `n_val` >= 1.")
    if cfg.n_val < 1 and any(m.partition("@")[0] == "flying_bird_plus" for m in cfg.methods):
        raise ValueError("flying_bird_plus needs validation data (its adaptive rules watch the validation "
                         "PGD loss): set `n_val` >= 1.")
    for family, args in cfg.sparse_args.items():
        if family not in PLUGINS or not isinstance(args, dict):
            raise ValueError(f"`sparse_args` maps a sparse family ({', '.join(PLUGINS)}) to a dict of its plug-in's "
                             f"arguments, got {family!r}: {args!r}.")
        try:
            make_plugin(family, None, cfg)
        except TypeError as exc:
            raise ValueError(f"`sparse_args[{family!r}]`: {exc}") from None


def make_plugin(family: str, knob: Optional[float], cfg: Any) -> Any:
    """The sparsity plug-in of a sparse method at density ``knob``, with the run's settings and
    ``cfg.sparse_args[family]`` (e.g. ``{"flying_bird_plus": {"update_threshold": 0.75}}``) on top."""
    density = DEFAULT_DENSITY if knob is None else knob
    cls, extra = PLUGINS[family], dict(getattr(cfg, "sparse_args", {}).get(family, {}))
    if cls is RobustBird:
        return cls(density, **extra)
    return cls(density, **{"init": cfg.sparse_init, "seed": cfg.seed, "init_scale": cfg.sparse_init_scale, **extra})


def trainer_options(family: str, knob: Optional[float], cfg: Any) -> dict:
    """``sparsity`` and ``plugins`` for a package trainer; empty for a dense method without paper metrics."""
    options: dict[str, Any] = {}
    if cfg.paper_metrics:
        options["plugins"] = [TrackBest()]  # first: it sees the validated weights, before any mask update
    if family in PLUGINS:
        options["sparsity"] = make_plugin(family, knob, cfg)
    return options


def tracker(trainer: Any) -> TrackBest:
    """The :class:`TrackBest` of a package trainer (a plug-in) or of an ART run (``track_best``)."""
    found = [p for p in getattr(trainer, "plugins", []) if isinstance(p, TrackBest)]
    return found[0] if found else trainer.track_best


def training_info(trainer: Any, family: str, cfg: Any, input_shape: tuple) -> dict:
    """After training: the sparsity report of a sparse method; under ``paper_metrics`` also the FLOPs
    and the best epoch (``best_state``, the weights, is for :func:`metrics` and never written)."""
    info: dict[str, Any] = {}
    if family in PLUGINS:
        info["sparsity"] = trainer.sparsity_report()
    if not cfg.paper_metrics:
        return info
    model = trainer.get_classifier().model
    if family in PLUGINS:
        report = info["sparsity"]
        flops = {"training": report["training_flops"]["total_sparse"],
                 "training_dense": report["training_flops"]["total_dense"],
                 "inference": report["inference_flops"]["sparse"], "density": report["density"]}
    else:
        fl = SparseFlops.measure(model, input_shape)
        if isinstance(trainer, ARTTrainerRun):  # PGD-AT (ART's attacks are CE-PGD) and the method's extra passes
            per_example = (fl.adversarial_training(cfg.max_iter, sparse=False)
                           + ARTTrainerRun.EXTRA_PASSES[trainer.method] * fl.natural_training(sparse=False))
        else:
            per_example = sum(learner_cost(fl, lrn, None) for lrn in trainer.base_learners())
        total = float(sum(r["examples"] for r in trainer.history) * per_example)
        flops = {"training": total, "training_dense": total, "inference": fl.inference(sparse=False), "density": 1.0}
    best = tracker(trainer)
    info["paper"] = {"flops": flops, "best_epoch": best.epoch, "best_val_pgd": best.best.score,
                     "final_epoch": trainer.history[-1]["epoch"]}
    info["best_state"] = best.state
    return info


def generalization_gap(classifier: Any, x_train: np.ndarray, y_train: np.ndarray, test_pgd: float, cfg: Any) -> dict:
    """PGD accuracy of ``classifier`` on a fixed subset of ``n_eval`` training points minus ``test_pgd``."""
    from art_generalist.evaluation import evaluate

    idx = np.sort(np.random.default_rng(cfg.seed).permutation(len(x_train))[:cfg.n_eval])
    report = evaluate(classifier, x_train[idx], y_train[idx], eps=cfg.eps, attacks=("pgd",), pgd_steps=cfg.pgd_steps,
                      seed=cfg.seed, device=cfg.device, checks=None, model_name="train subset")
    train_pgd = report.attacks["pgd"]["acc"]
    return {"train_pgd": train_pgd, "test_pgd": test_pgd, "gap": train_pgd - test_pgd, "n_train_points": len(idx)}


def metrics(classifier: Any, info: dict, final: Any, train: tuple, x_test: np.ndarray, y_test: np.ndarray,
            cfg: Any, evaluate_fn: Any) -> dict:
    """The paper's numbers of one method; ``final`` is the final model's evaluation report and
    ``evaluate_fn(classifier)`` evaluates another model the same way."""
    from art_generalist import estimators

    paper = dict(info.pop("paper"))
    state = info.pop("best_state")
    best = final
    if paper["best_epoch"] != paper["final_epoch"]:
        model = estimators.copy_model(classifier.model)
        model.load_state_dict(state)
        best = evaluate_fn(estimators.make_classifier(classifier, model, None))
    for name, rep in (("best", best), ("final", final)):
        paper[name] = {"clean": rep.clean_acc, "pgd": rep.attacks.get("pgd", {}).get("acc"),
                       "autoattack": rep.attacks.get("autoattack", {}).get("acc")}
    paper["diff"] = {k: None if paper["best"][k] is None else paper["best"][k] - paper["final"][k]
                     for k in ("clean", "pgd", "autoattack")}
    paper["generalization"] = generalization_gap(classifier, *train, paper["final"]["pgd"], cfg)
    return paper


def format_paper_table(rows: list[dict]) -> str:
    """The paper's columns for the rows that have them (results.md's second table)."""
    def pct(v):
        return "—" if v is None else f"{100 * v:.2f}"

    dense = next((r["paper"]["flops"]["training"] for r in rows if r["method"] == "pgd_at" and r.get("paper")), None)
    lines = ["| method | density | RA best | RA final | RA diff | AA best | AA final | SA best | SA final | "
             "train FLOPs | × pgd_at | inference FLOPs | gap (train − test RA) | best epoch |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p = r.get("paper")
        if not p:
            continue
        fl = p["flops"]
        ratio = "—" if not dense else f"{fl['training'] / dense:.3f}"
        lines.append(f"| {r['method']} | {fl['density']:.3f} | {pct(p['best']['pgd'])} | {pct(p['final']['pgd'])} | "
                     f"{pct(p['diff']['pgd'])} | {pct(p['best']['autoattack'])} | {pct(p['final']['autoattack'])} | "
                     f"{pct(p['best']['clean'])} | {pct(p['final']['clean'])} | {fl['training']:.3e} | {ratio} | "
                     f"{fl['inference']:.3e} | {pct(p['generalization']['gap'])} | "
                     f"{p['best_epoch']} of {p['final_epoch']} |")
    return "\n".join(lines)


def paper_section(out: Any, results: dict) -> list[str]:
    """results.md's section for the paper's metrics (empty when they are off); draws ``out/sparse.png``."""
    rows = [r for r in results["rows"] if r.get("paper")]
    if not rows:
        return []
    cfg = results["config"]
    plot_sparse(out / "sparse.png", rows, f"{cfg['dataset']} ε={cfg['eps']:g}, n={results['n_eval']}: final robust "
                f"accuracy vs training FLOPs")
    return ["## The paper's metrics (Sparsity Winning Twice)", "",
            f"RA: PGD-{cfg['pgd_steps']} accuracy on the {results['n_eval']} test points; AA: AutoAttack "
            f"`{cfg['aa_version']}`; SA: clean accuracy. Best: the epoch of the best validation PGD accuracy "
            f"(kept, not restored); final: the last epoch (the shipped model); diff = best − final (robust "
            f"overfitting). Gap: PGD accuracy of the final model on {results['n_eval']} training points minus "
            f"on the test points. FLOPs: training in total (attack included, validation not), inference per "
            f"example, counted with FlopCounterMode on the real model, sparse layers scaled by their density; "
            f"× pgd_at: training FLOPs over dense PGD-AT's in this run. Unstructured sparsity saves FLOPs, not "
            f"wall-clock time.", "", format_paper_table(rows), "", "![sparse](sparse.png)", ""]


def plot_sparse(path: Any, rows: list[dict], title: str) -> None:
    """Final robust accuracy (PGD) against training FLOPs, one point per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for i, r in enumerate(r for r in rows if r.get("paper")):
        x, y = r["paper"]["flops"]["training"], 100 * r["paper"]["final"]["pgd"]
        ax.scatter(x, y, color=f"C{i % 10}", label=r["method"])
        ax.annotate(r["method"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs (total, sparse)")
    ax.set_ylabel("robust accuracy, final model (PGD, %)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
