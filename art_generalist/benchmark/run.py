"""The one-command benchmark: Generalist, ART Madry and ART TRADES at the same budget.

Same model, data, epochs, ε, PGD budget, optimizer and learning-rate schedule; the same
evaluation (clean, PGD, AutoAttack, per-example worst case) on the same test points, with the
integrity checks reported. Writes ``results.json``, ``results.md``, ``tradeoff.png`` (``sparse.png``: .sparse).
"""
from __future__ import annotations

import json
import logging
import math
import os
import platform
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from statistics import median
from typing import Any, Optional

import numpy as np
import torch

from art_generalist._version import __version__, source_commit
from art_generalist.benchmark import fronts, sparse_metrics
from art_generalist.benchmark.art_runner import WORKAROUNDS, ARTTrainerRun
from art_generalist.benchmark.report import _epoch_ratios, format_fronts, format_table, write_results  # noqa: F401
from art_generalist.core.attack import madry_step
from art_generalist.core.schedules import OFFICIAL_LR, resolve_schedule
from art_generalist.data import load_dataset
from art_generalist.estimators import build_classifier
from art_generalist.methods import registry
from art_generalist.models import default_model, get_model
from art_generalist.parallel import ranks
from art_generalist.state.files import read_json, remove_stale_temporaries
from art_generalist.state.fingerprint import OtherRunError, differences

logger = logging.getLogger(__name__)

#: The benchmark's methods: those of the method registry offered to the benchmark, in its order.
METHODS = registry.method_names(benchmark=True)


@dataclass
class BenchmarkConfig:
    """Everything a benchmark run depends on (all methods share it)."""

    dataset: str = "digits"
    model: Optional[str] = None
    epochs: int = 10
    eps: Optional[float] = None
    eps_step: Optional[float] = None
    max_iter: int = 10
    methods: tuple[str, ...] = ("generalist", "art_madry", "art_trades")
    n_train: Optional[int] = None
    n_val: int = 200
    n_eval: int = 300
    aa_version: str = "fast"
    pgd_steps: int = 20
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    trades_beta: float = 6.0
    lr_schedule: str = "official"  # every method's lr factor: official, multistep (sparse paper's), constant
    per_iteration_schedules: bool = False  # lr (and Generalist's β) at fractional epochs, for every method
    art_lr_chunks: int = 20  # ART's fit calls per epoch under per-iteration schedules (see chunked_lr)
    base_learners: bool = True  # also evaluate Generalist's base learners (their EMA teachers)
    data_root: Optional[str] = None
    device: str = "cpu"
    seed: int = 0
    out: str = "results"
    verbose: bool = True
    generalist: dict = field(default_factory=dict)  # extra GeneralistTrainer arguments
    resume: bool = False  # keep the finished methods of `out`, resume the others from their checkpoints
    paper_metrics: bool = False  # best/final, gap and FLOPs of every method (benchmark.sparse_metrics)
    sparse_init: str = "igq"  # layer densities of Flying Bird(+): igq (official), erk or uniform
    sparse_init_scale: str = "auto"  # Flying Bird(+)'s initial rescale of the kept weights (FlyingBird.init_scale)
    sparse_args: dict = field(default_factory=dict)  # per sparse family, extra plug-in arguments (sparse_metrics)

    def __post_init__(self) -> None:
        for method in self.methods:
            family, knob = fronts.split_method(method, METHODS)
            if family == "generalist" and knob is not None and "beta_schedule" in self.generalist:
                raise ValueError(f"{method!r} sets the final β; drop `beta_schedule` from the Generalist options.")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"`methods` must be distinct, got {list(self.methods)}.")
        counts = {"epochs": 1, "n_eval": 1, "max_iter": 1, "art_lr_chunks": 1, "batch_size": 1, "pgd_steps": 1,
                  "n_val": 0, "n_train": 1, "seed": 0}
        for name, low in counts.items():
            value = getattr(self, name)
            if (value is not None or name != "n_train") and (isinstance(value, bool) or not isinstance(value, int)
                                                              or value < low):
                raise ValueError(f"`{name}` must be an integer >= {low}, got {value!r}.")
        for name in ("eps", "eps_step", "lr"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"`{name}` must be a finite number > 0, got {value!r}.")
        resolve_schedule(self.lr_schedule, "lr_schedule", OFFICIAL_LR)  # raises on an unknown name
        sparse_metrics.check_config(self)


def _train(method: str, cfg: BenchmarkConfig, data: Any, split: dict) -> tuple[Any, dict]:
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)  # ART shuffles with numpy's global generator: same start for every method
    checkpoints = Path(cfg.out) / "checkpoints" / method.replace("@", "_")
    model = get_model(cfg.model, data.input_shape[0], data.nb_classes, data.input_shape[-1])
    clf = build_classifier(model, data, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.device)
    budget = dict(eps=cfg.eps, eps_step=cfg.eps_step, max_iter=cfg.max_iter)
    fit = dict(validation_data=split["val"], nb_epochs=cfg.epochs, batch_size=cfg.batch_size,
               checkpoint_dir=checkpoints, keep_last=1, resume=cfg.resume)
    info: dict[str, Any] = {"workarounds": []}
    extra: dict = {}
    start = time.perf_counter()
    per_iteration = dict(per_iteration_schedules=cfg.per_iteration_schedules, lr_schedule=cfg.lr_schedule)
    family, knob = fronts.split_method(method, METHODS)
    entry = registry.get_method(family)
    # the knob's options; a TRADES β knob left unset is the configured β
    knob_options = entry.knob_options(cfg.trades_beta if knob is None and entry.knob == registry.TRADES_BETA
                                      else knob)
    sparse_options = sparse_metrics.trainer_options(family, knob, cfg)  # {} for a dense method without paper metrics
    if entry.is_generalist:
        options = {**per_iteration, **cfg.generalist, **sparse_options, **knob_options}
        trainer = entry.build(clf, budget, verbose=cfg.verbose, **options)
        history = trainer.fit(*split["train"], **fit)
        extra = ({f"{method}:teacher:{lrn.name}": trainer.space(lrn.teacher.module) for lrn in trainer.learners}
                 if cfg.base_learners else {})
    elif entry.art is None:
        averaging = ({k: cfg.generalist[k] for k in ("ema_decay", "ema_warmup") if k in cfg.generalist}
                     if entry.averaged else {})  # the same averaging as Generalist's global learner
        trainer = entry.build(clf, budget, verbose=cfg.verbose, **per_iteration, **sparse_options, **averaging,
                              **knob_options)
        history = trainer.fit(*split["train"], **fit)
    else:
        trainer = ARTTrainerRun(clf, entry.art, **{"trades_beta": cfg.trades_beta, **knob_options},
                                verbose=cfg.verbose, seed=cfg.seed,
                                lr_schedule=resolve_schedule(cfg.lr_schedule, "lr_schedule", OFFICIAL_LR),
                                lr_updates_per_epoch=cfg.art_lr_chunks if cfg.per_iteration_schedules else 1,
                                track_best=sparse_metrics.TrackBest() if cfg.paper_metrics else None, **budget)
        history = trainer.fit(*split["train"], nb_epochs=cfg.epochs, batch_size=cfg.batch_size,
                              validation_data=split["val"], checkpoint_dir=checkpoints, resume=cfg.resume)
        info["workarounds"] = [{"id": w, "what": WORKAROUNDS[w]} for w in trainer.workarounds]
    seconds = time.perf_counter() - start
    epoch_seconds = [r["seconds"] for r in history]
    info.update(train_seconds=seconds, epoch_seconds=epoch_seconds, median_epoch_seconds=median(epoch_seconds),
                examples_per_s=len(split["train"][0]) * cfg.epochs / sum(epoch_seconds), history=history,
                extra_models=extra, **sparse_metrics.training_info(trainer, family, cfg, data.input_shape))
    return trainer.get_classifier(), info


def run_benchmark(cfg: BenchmarkConfig) -> dict:
    """Train every method, evaluate each the same way, write the three result files."""
    from art_generalist.evaluation import evaluate

    data = load_dataset(cfg.dataset, root=cfg.data_root, seed=cfg.seed,
                        n_train=None if cfg.n_train is None else cfg.n_train + cfg.n_val)
    cfg.model = cfg.model or default_model(cfg.dataset)
    cfg.eps = data.eps if cfg.eps is None else cfg.eps
    cfg.eps_step = madry_step(cfg.eps, cfg.max_iter) if cfg.eps_step is None else cfg.eps_step
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(data.x_train))  # validation comes from the training split, never the test set
    val_idx, train_idx = order[:cfg.n_val], order[cfg.n_val:]
    split = {"train": (data.x_train[train_idx], data.y_train[train_idx]),
             "val": (data.x_train[val_idx], data.y_train[val_idx]) if cfg.n_val else None}
    test_idx = np.sort(rng.permutation(len(data.x_test))[:cfg.n_eval])
    x_test, y_test = data.x_test[test_idx], data.y_test[test_idx]
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if ranks.is_main_process():
        remove_stale_temporaries(out)  # the temporaries of a write that a kill interrupted
    if not cfg.resume and (out / "results.json").is_file():
        raise FileExistsError(f"{out / 'results.json'} holds the results of another run: pass resume=True "
                              f"(--resume) to continue it, or another output folder; nothing was overwritten.")
    earlier = _earlier(out, cfg) if cfg.resume else None
    rows, reports = _finished(earlier, cfg)
    if earlier is not None:
        dropped = sorted(set(earlier["reports"]) - set(reports))
        if dropped:
            logger.warning("%s: the results of %s are not in this run's methods and leave results.json",
                           out / "results.json", ", ".join(dropped))
        if earlier.get("complete") and not dropped and set(reports) == set(cfg.methods) \
                and {"fronts", "epoch_time_ratio_vs_art_madry"} <= set(earlier):
            logger.warning("%s: every method finished in an earlier run; the results are left as they are",
                           out / "results.json")
            return earlier
    results = {**(earlier or {}), "config": dict(vars(cfg)), "rows": rows, "reports": reports, "machine": _machine(),
               "n_train": len(split["train"][0]), "n_eval": len(x_test), "complete": False}
    if earlier is not None and reports and earlier.get("machine") != results["machine"]:
        results["machine_of_earlier_methods"] = earlier.get("machine_of_earlier_methods", earlier.get("machine"))
    _summarise(results)
    ranks.barrier()  # every rank has read the folder (the checks above) before rank 0 writes into it
    write_results(out, results)  # the settings are on disk before any training: a stopped run resumes checked
    for method in cfg.methods:
        if method in reports:
            logger.info("%s: finished in an earlier run, kept", method)
            continue
        logger.info("training %s", method)
        classifier, info = _train(method, cfg, data, split)
        test_eval = partial(evaluate, x=x_test, y=y_test, eps=cfg.eps, attacks=("pgd", "autoattack"),
                            aa_version=cfg.aa_version, pgd_steps=cfg.pgd_steps, seed=cfg.seed, device=cfg.device,
                            progress=cfg.verbose)
        report = test_eval(classifier, model_name=method)
        reports[method] = {**report.to_dict(), **({"sparsity": info.pop("sparsity")} if "sparsity" in info else {})}
        rows.append(_row(method, report, info))
        if cfg.paper_metrics:
            rows[-1]["paper"] = reports[method]["paper"] = sparse_metrics.metrics(
                classifier, info, report, split["train"], x_test, y_test, cfg, test_eval)
        for name, space in info.pop("extra_models").items():
            rows.append(_row(name, _evaluate_space(space, classifier, x_test, y_test, cfg), None))
        reports[method]["training"] = dict(info)
        _summarise(results)
        write_results(out, results)  # after every method: a long run that is stopped keeps what it finished
    results["complete"] = True
    write_results(out, results)
    return results


def _summarise(results: dict) -> None:
    """The epoch-time ratios, the dominated marks and the front verdict of the rows so far."""
    results["epoch_time_ratio_vs_art_madry"] = _epoch_ratios(results["rows"])
    fronts.mark_dominated(results["rows"])
    results["fronts"] = fronts.front_verdict(results["rows"])


#: Settings that may change between a run and its ``resume``: which methods to run (the finished
#: ones of the list are kept), whether to resume, progress output, and where the data and the
#: results are read and written and what runs the arithmetic. Every other field changes results.
RUNTIME_FIELDS = frozenset({"methods", "resume", "verbose", "out", "data_root", "device"})


def _earlier(out: Path, cfg: BenchmarkConfig) -> Optional[dict]:
    """The ``results.json`` of an earlier run in ``out``, refused when its settings differ."""
    path = out / "results.json"
    if not path.is_file():
        return None
    earlier = read_json(path)
    if not isinstance(earlier, dict) or not {"config", "rows", "reports"} <= set(earlier):
        raise ValueError(f"{path} is not the results.json of a benchmark run (no config, rows or reports); move it "
                         f"aside to start afresh.")
    mine = json.loads(json.dumps(dict(vars(cfg)), default=str))
    # a setting that an earlier version did not record had its default value then
    theirs = {**json.loads(json.dumps(dict(vars(BenchmarkConfig())), default=str)), **earlier["config"]}
    compared = [k for k in set(mine) | set(theirs) if k not in RUNTIME_FIELDS]
    differ = differences({k: theirs.get(k) for k in compared}, {k: mine.get(k) for k in compared},
                         stored_in="results.json")
    if differ:
        detail = "; ".join(differ)
        raise OtherRunError(f"{path} was written with other settings ({detail}); resume with the same settings or "
                         f"another --out.")
    return earlier


def _finished(earlier: Optional[dict], cfg: BenchmarkConfig) -> tuple[list[dict], dict]:
    """Rows and reports of the methods of ``cfg`` that the earlier run finished."""
    if earlier is None:
        return [], {}
    keep = [m for m in earlier["reports"] if m in cfg.methods]
    rows = [r for r in earlier["rows"] if r["method"].split(":")[0] in keep]
    return rows, {m: earlier["reports"][m] for m in keep}


def _evaluate_space(space, template, x, y, cfg):
    """Evaluate a teacher (an extra model behind the same pipeline) with the same evaluation."""
    from art_generalist import estimators
    from art_generalist.evaluation import evaluate

    clf = estimators.make_classifier(template, space.model, None)
    return evaluate(clf, x, y, eps=cfg.eps, attacks=("pgd", "autoattack"), aa_version=cfg.aa_version,
                    pgd_steps=cfg.pgd_steps, seed=cfg.seed, device=cfg.device, model_name="teacher",
                    progress=cfg.verbose)


def _row(name: str, report: Any, info: Optional[dict]) -> dict:
    attacks = report.attacks
    family, knob = (name.split(":")[0], None) if info is None else fronts.split_method(name, METHODS)
    return {"method": name, "family": family, "knob": knob, "n": report.n, "clean": report.clean_acc,
            "pgd": attacks.get("pgd", {}).get("acc"),
            "autoattack": attacks.get("autoattack", {}).get("acc"), "worst_case": report.robust_acc,
            "reliable": report.reliable, "unreliable_reasons": report.unreliable_reasons,
            "train_seconds": info["train_seconds"] if info else None,
            "epoch_seconds": info["median_epoch_seconds"] if info else None,
            "examples_per_s": info["examples_per_s"] if info else None,
            "workarounds": [w["id"] for w in info["workarounds"]] if info else [], "base_learner": info is None}


def _machine() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "art_generalist": __version__,
            "art_generalist_commit": source_commit(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
