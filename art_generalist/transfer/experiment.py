"""The robust-transfer reproduction (Salman et al., NeurIPS 2020), offline: ``art-generalist transfer``.

1. Source models are trained on one data set at several ε (0 is standard training, ε > 0 PGD-AT;
   optionally the Generalist global learner at some ε) and exported as safetensors.
2. Each source is loaded with :func:`~art_generalist.transfer.load_source` (a new head for the
   target classes, the source normalisation kept) and fine-tuned on the target data set with
   :class:`~art_generalist.transfer.TransferTrainer`, fixed-feature and full-network, once per
   seed (the seed draws the new head, the shuffles and the held-out split that picks the lr).
3. Every fine-tuned model is evaluated on the same target test points: clean accuracy and PGD
   accuracy at the target ε (:func:`art_generalist.evaluate`, integrity checks on).

Everything is written to ``--out``: the sources, ``runs.jsonl`` (one line per fine-tuning run;
a rerun skips what is there, so an interrupted run resumes), ``results.json``, ``results.md``
(mean ± standard deviation over seeds) and ``transfer.png`` (transfer accuracy against source ε,
one line per mode).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from art_generalist.state.files import atomic_write_json, atomic_write_text, remove_stale_temporaries

logger = logging.getLogger(__name__)

MODES = ("fixed-feature", "full")


def append_jsonl(path: Path, record: dict) -> None:
    """Append one JSON line to an append-only log and fsync it. A kill can cut only this last
    line short, which :func:`read_jsonl` then drops; the lines before it stay whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: Path) -> list[dict]:
    """The records of a log written by :func:`append_jsonl` (none when there is no file).

    A last line that is not JSON (an append cut short by a kill or a full disk) is dropped with a
    warning and the file rewritten atomically without it, so the next append starts on a line of
    its own; its run is simply redone. A bad line before the last is refused, naming the file and line.
    """
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    records, torn = [], False
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if i < len(lines):
                raise ValueError(f"{path}, line {i}, is not valid JSON ({err}); the log was edited or damaged. "
                                 f"Remove that line (its run is redone) or move the file aside.") from None
            logger.warning("%s: its last line is cut short (an interrupted write); dropped, that run is redone", path)
            torn = True
    if torn or (text and not text.endswith("\n")):  # the next append must start on a line of its own
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))
    return records


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _source_name(method: str, eps: float) -> str:
    return f"{method}_eps{eps:g}"


def train_source(method: str, eps: float, args: argparse.Namespace, data: Any, out: Path) -> Path:
    """Train (or find) one source model and return its export path."""
    from art_generalist.core.attack import madry_step
    from art_generalist.estimators import build_classifier
    from art_generalist.methods import GeneralistTrainer, SingleLearnerTrainer
    from art_generalist.models import get_model

    name = _source_name(method, eps)
    path = out / "sources" / f"{name}.safetensors"
    if path.is_file():
        return path
    torch.manual_seed(args.seed)
    model = get_model(args.model, data.input_shape[0], data.nb_classes, data.input_shape[-1])
    clf = build_classifier(model, data, device=args.device)
    budget_eps = eps if eps > 0 else 0.1  # standard training: the eps only sets the (unused) attack
    budget = dict(eps=budget_eps, eps_step=madry_step(budget_eps, args.max_iter), max_iter=args.max_iter,
                  verbose=not args.quiet, val_max_iter=0)
    trainer = (GeneralistTrainer(clf, **budget) if method == "generalist" else
               SingleLearnerTrainer(clf, objective="pgd" if eps > 0 else "natural", lr_schedule="official",
                                    **budget))
    start = time.perf_counter()
    trainer.fit(data.x_train, data.y_train, nb_epochs=args.source_epochs, batch_size=128,
                checkpoint_dir=out / "checkpoints" / name, resume=True)
    logger.info("source %s trained in %.0f s", name, time.perf_counter() - start)
    trainer.export(path)
    return path


def transfer_once(source: Path, mode: str, seed: int, args: argparse.Namespace, target: Any,
                  split: dict) -> dict:
    """Fine-tune one source on the target data and evaluate it (one line of ``runs.jsonl``)."""
    from art.estimators.classification import PyTorchClassifier

    from art_generalist.evaluation import evaluate
    from art_generalist.transfer import TransferTrainer, load_source

    torch.manual_seed(seed)  # the new head's initial weights, then the shuffles
    src = load_source(source, None, num_classes=target.nb_classes)
    clf = PyTorchClassifier(src.model, loss=nn.CrossEntropyLoss(), input_shape=target.input_shape,
                            nb_classes=target.nb_classes, clip_values=(0.0, 1.0), preprocessing=src.preprocessing,
                            device_type="gpu" if args.device.startswith("cuda") else "cpu")
    trainer = TransferTrainer(clf, mode=mode, lr_grid=_floats(args.lr_grid), split_seed=seed, eps=args.target_eps,
                              eps_step=args.target_eps / 4, max_iter=5, val_max_iter=0, verbose=not args.quiet)
    start = time.perf_counter()
    trainer.fit(*split["train"], nb_epochs=args.target_epochs, batch_size=64)
    seconds = time.perf_counter() - start
    report = evaluate(trainer.get_classifier(), *split["test"], eps=args.target_eps, attacks=("pgd",),
                      pgd_steps=args.pgd_steps, seed=seed, model_name=f"{source.stem}/{mode}/{seed}")
    return {"source": source.stem, "mode": mode, "seed": seed, "clean": report.clean_acc,
            "robust": report.robust_acc, "reliable": report.reliable, "best_lr": trainer.best_lr,
            "val_scores": {f"{k:g}": v for k, v in trainer.val_scores.items()}, "train_seconds": seconds}


def summarize(runs: list[dict]) -> list[dict]:
    """Mean and standard deviation over seeds, per source and mode."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        groups.setdefault((r["source"], r["mode"]), []).append(r)
    rows = []
    for (source, mode), rs in groups.items():
        method, eps = source.rsplit("_eps", 1)
        row = {"source": source, "method": method, "source_eps": float(eps), "mode": mode, "seeds": len(rs)}
        for key in ("clean", "robust"):
            values = [100 * r[key] for r in rs]
            row[key], row[f"{key}_sd"] = statistics.fmean(values), statistics.stdev(values) if len(rs) > 1 else 0.0
        rows.append(row)
    return sorted(rows, key=lambda r: (r["mode"], r["method"] == "generalist", r["source_eps"]))


def write_outputs(out: Path, args: argparse.Namespace, runs: list[dict], n_eval: int) -> list[dict]:
    rows = summarize(runs)
    atomic_write_json(out / "results.json", {"args": vars(args), "runs": runs, "rows": rows}, indent=2, default=str)
    md = [f"# Transfer: {args.source_dataset} sources ({args.model}) -> {args.target_dataset}", "",
          f"{args.target_n_train} target training images ({args.target_epochs} epochs, lr grid {args.lr_grid} "
          f"selected on a held-out 10%), {n_eval} target test points; robust = PGD-{args.pgd_steps} at "
          f"eps {args.target_eps:g}; mean ± sd over seeds {args.seeds}.", "",
          "| source | source eps | mode | clean | PGD |", "|---|---|---|---|---|"]
    md += [f"| {r['method']} | {r['source_eps']:g} | {r['mode']} | {r['clean']:.2f} ± {r['clean_sd']:.2f} | "
           f"{r['robust']:.2f} ± {r['robust_sd']:.2f} |" for r in rows]
    atomic_write_text(out / "results.md", "\n".join(md) + "\n")
    plot(out / "transfer.png", rows, args)
    return rows


def plot(path: Path, rows: list[dict], args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "clean", "clean"), (axes[1], "robust", f"PGD-{args.pgd_steps}")):
        for i, mode in enumerate(sorted({r["mode"] for r in rows})):
            line = [r for r in rows if r["mode"] == mode and r["method"] != "generalist"]
            ax.errorbar([r["source_eps"] for r in line], [r[key] for r in line], yerr=[r[f"{key}_sd"] for r in line],
                        marker="o", capsize=3, color=f"C{i}", label=f"{mode} (PGD-AT / standard sources)")
            for r in (r for r in rows if r["mode"] == mode and r["method"] == "generalist"):
                ax.errorbar([r["source_eps"]], [r[key]], yerr=[r[f"{key}_sd"]], marker="*", markersize=12,
                            capsize=3, color=f"C{i}", linestyle="none", label=f"{mode} (Generalist source)")
        ax.set_xlabel(f"source eps ({args.source_dataset})")
        ax.set_ylabel(f"{args.target_dataset} {label} accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Transfer {args.source_dataset} -> {args.target_dataset}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_transfer(args: argparse.Namespace) -> list[dict]:
    """The whole reproduction; returns the summary rows."""
    from art_generalist.data import load_dataset

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)  # what a write killed mid-way left
    source_data = load_dataset(args.source_dataset, root=args.data_root, seed=args.seed, n_train=args.source_n_train)
    sources = [train_source("pgd_at" if eps > 0 else "standard", eps, args, source_data, out)
               for eps in _floats(args.source_eps)]
    sources += [train_source("generalist", eps, args, source_data, out) for eps in _floats(args.generalist_eps)]
    target = load_dataset(args.target_dataset, root=args.data_root, seed=args.seed, n_train=args.target_n_train)
    test_idx = np.sort(np.random.default_rng(args.seed).permutation(len(target.x_test))[:args.n_eval])
    split = {"train": (target.x_train, target.y_train), "test": (target.x_test[test_idx], target.y_test[test_idx])}
    log = out / "runs.jsonl"
    runs = read_jsonl(log)
    done = {(r["source"], r["mode"], r["seed"]) for r in runs}
    for source in sources:
        for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
            for seed in [int(s) for s in args.seeds.split(",") if s.strip()]:
                if (source.stem, mode, seed) in done:
                    continue
                runs.append(transfer_once(source, mode, seed, args, target, split))
                logger.info("%s", runs[-1])
                append_jsonl(log, runs[-1])
                write_outputs(out, args, runs, len(test_idx))
    return write_outputs(out, args, runs, len(test_idx))
