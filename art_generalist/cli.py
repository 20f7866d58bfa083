"""``art-generalist``: benchmark, train and evaluate from the command line."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from art_generalist import distributed
from art_generalist.attacks import madry_step
from art_generalist.benchmark.fronts import FRONT_METHODS
from art_generalist.benchmark.run import METHODS, BenchmarkConfig, format_fronts, format_table
from art_generalist.benchmark.sparse import format_paper_table
from art_generalist.config import GeneralistConfig
from art_generalist.data import DATASETS
from art_generalist.estimators import build_classifier
from art_generalist.models import default_model


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="digits", choices=sorted(DATASETS))
    p.add_argument("--model", default=None, help="model registry name (default: per data set)")
    p.add_argument("--eps", type=float, default=None, help="ε in [0, 1] input units (default: per data set)")
    _runtime(p)


def _runtime(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", default=None, help="default: $ART_GENERALIST_DATA")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _training(p: argparse.ArgumentParser) -> None:
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--eps-step", type=float, default=None, help="default 2.5·eps/max_iter")
    p.add_argument("--max-iter", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--lr-schedule", default="official", choices=["official", "multistep", "constant"],
                   help="lr factor over the budget: official (Generalist's: 1, 1, 0.1, 0.01 linear through 0, "
                        "E/3, 2E/3, E), multistep (x0.1 after E/2 and 3E/4, the sparse paper's), constant")
    p.add_argument("--n-train", type=int, default=None, help="training subset size (default: all)")
    p.add_argument("--n-val", type=int, default=200, help="validation points taken from the training split")


def _transfer_parser(sub: Any) -> None:
    t = sub.add_parser("transfer", help="robust transfer reproduction: sources at several eps, fine-tuned "
                       "fixed-feature and full on a target set, a table and a figure (resumable)")
    _runtime(t)
    t.add_argument("--source-dataset", default="fashion_mnist")
    t.add_argument("--target-dataset", default="mnist")
    t.add_argument("--model", default="smallcnn", help="registry model of the sources")
    t.add_argument("--source-eps", default="0,0.05,0.1,0.2", help="comma list; 0 = standard training")
    t.add_argument("--generalist-eps", default="0.1", help="comma list of eps for Generalist sources ('' for none)")
    t.add_argument("--source-epochs", type=int, default=5)
    t.add_argument("--source-n-train", type=int, default=10000)
    t.add_argument("--max-iter", type=int, default=5, help="PGD steps of source training")
    t.add_argument("--target-n-train", type=int, default=2000)
    t.add_argument("--target-epochs", type=int, default=6)
    t.add_argument("--modes", default="fixed-feature,full")
    t.add_argument("--seeds", default="0,1,2")
    t.add_argument("--lr-grid", default="0.01,0.001")
    t.add_argument("--target-eps", type=float, default=0.1, help="eps of the downstream PGD evaluation")
    t.add_argument("--pgd-steps", type=int, default=20)
    t.add_argument("--n-eval", type=int, default=1000)
    t.add_argument("--out", default="transfer_out")


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def _generalist_options(text: str) -> dict:
    """A JSON object of Generalist options, checked against :class:`GeneralistConfig`."""
    value = _json_object(text)
    try:
        GeneralistConfig.from_options(**value)
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="art-generalist", description=__doc__)
    sub = root.add_subparsers(dest="command", required=True)
    b = sub.add_parser("benchmark", help="Generalist vs ART Madry vs ART TRADES at the same budget")
    _common(b)
    _training(b)
    b.add_argument("--methods", default="generalist,art_madry,art_trades",
                   help=f"comma list of {list(METHODS)}; a knob after @ sweeps a front: generalist@0.7 (final β), "
                        "art_trades@3 or trades@3 (TRADES β), flying_bird@0.2 (density of the sparse methods, "
                        "default 0.2)")
    b.add_argument("--paper-metrics", action="store_true",
                   help="the sparse-training paper's columns for every method: robust and clean accuracy of the "
                        "best (validation PGD) and final epochs, their difference, the train − test robust gap, "
                        "training and inference FLOPs; a second table in results.md and sparse.png")
    b.add_argument("--sparse-init", default="igq", choices=["igq", "erk", "uniform"],
                   help="layer densities of Flying Bird(+): igq (the official default) keeps small layers denser, "
                        "which on SmallCNN leaves 57%% of the dense FLOPs at density 0.2; erk 21%%")
    b.add_argument("--sparse-init-scale", default="auto", choices=["auto", "none", "fan_in"],
                   help="Flying Bird(+)'s initial rescale of the kept weights: fan_in restores each unit's dense "
                        "scale, none is the official start, auto (default) is fan_in on models without "
                        "normalisation layers")
    b.add_argument("--sparse-args", default=None, type=_json_object,
                   help="extra plug-in arguments per sparse family as a JSON object, e.g. "
                        "'{\"flying_bird_plus\": {\"update_threshold\": 0.75}}'")
    b.add_argument("--fronts", action="store_true",
                   help=f"trade-off fronts: --methods {','.join(FRONT_METHODS)}")
    b.add_argument("--n-eval", type=int, default=300, help="test points evaluated")
    b.add_argument("--aa-version", default="fast", help="AutoAttack: standard, fast (APGD-CE + APGD-T), apgd-ce")
    b.add_argument("--pgd-steps", type=int, default=20)
    b.add_argument("--per-iteration-schedules", action="store_true",
                   help="every method's lr (and Generalist's β) follows the schedule at fractional epochs "
                        "(ART's trainers in --art-lr-chunks chunks per epoch); for runs of a few epochs")
    b.add_argument("--art-lr-chunks", type=int, default=20,
                   help="ART fit calls per epoch with --per-iteration-schedules")
    b.add_argument("--generalist-args", default=None, type=_generalist_options,
                   help="Generalist options as a JSON object, e.g. "
                        "'{\"distribute_every\": 0.125, \"beta_schedule\": [[0, 0.333, 0.667, 1], [1, 1, 1, 0.2]]}'; "
                        f"options: {', '.join(n for n in GeneralistConfig.flat_names() if n != 'learners')}")
    b.add_argument("--no-base-learners", action="store_true", help="skip evaluating Generalist's base learners")
    b.add_argument("--resume", action="store_true",
                   help="keep the methods already finished in --out and resume the others from their checkpoints")
    b.add_argument("--out", default="results")
    t = sub.add_parser("train", help="train one method, checkpoint, export the model")
    _common(t)
    _training(t)
    t.add_argument("--method", default="generalist", choices=["generalist", "pgd_at", "trades", "mart"])
    t.add_argument("--out", default="runs/train")
    t.add_argument("--checkpoint-every", type=int, default=1)
    t.add_argument("--resume", action="store_true")
    _transfer_parser(sub)
    e = sub.add_parser("evaluate", help="evaluate an exported model (clean, PGD, CW, AutoAttack, checks)")
    _common(e)
    e.add_argument("model_path", help="a .safetensors file written by `train` or `trainer.export`")
    e.add_argument("--n-eval", type=int, default=1000)
    e.add_argument("--attacks", default="pgd,cw,autoattack")
    e.add_argument("--aa-version", default="standard")
    e.add_argument("--pgd-steps", type=int, default=50)
    e.add_argument("--checks", default="cheap", choices=["cheap", "all", "none"])
    e.add_argument("--out", default=None, help="write the report as JSON here")
    return root


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")  # other libraries: warnings only
    logging.getLogger("art_generalist").setLevel(logging.WARNING if args.quiet else logging.INFO)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    joined = not distributed.active()
    args.device = distributed.init_from_env(args.device)  # under torchrun: join the process group
    joined = joined and distributed.active()
    if not distributed.is_main_process():  # rank 0 prints, writes and logs; the others only compute
        logging.getLogger("art_generalist").setLevel(logging.WARNING)
        args.quiet = True
    try:
        return {"benchmark": _benchmark, "train": _train, "evaluate": _evaluate,
                "transfer": _transfer}[args.command](args)
    finally:
        if joined:
            distributed.barrier()
            torch.distributed.destroy_process_group()


def _say(text: str) -> None:
    """Print on rank 0 only (everywhere in one process)."""
    if distributed.is_main_process():
        print(text)


def _benchmark(args: argparse.Namespace) -> int:
    from art_generalist.benchmark.run import run_benchmark

    cfg = BenchmarkConfig(dataset=args.dataset, model=args.model, epochs=args.epochs, eps=args.eps,
                          eps_step=args.eps_step, max_iter=args.max_iter,
                          methods=FRONT_METHODS if args.fronts else tuple(m.strip() for m in args.methods.split(",")
                                                                          if m.strip()),
                          n_train=args.n_train, n_val=args.n_val, n_eval=args.n_eval, aa_version=args.aa_version,
                          pgd_steps=args.pgd_steps, batch_size=args.batch_size, lr=args.lr, data_root=args.data_root,
                          device=args.device, seed=args.seed, out=args.out, verbose=not args.quiet,
                          per_iteration_schedules=args.per_iteration_schedules, art_lr_chunks=args.art_lr_chunks,
                          base_learners=not args.no_base_learners, generalist=args.generalist_args or {},
                          resume=args.resume, paper_metrics=args.paper_metrics, sparse_init=args.sparse_init,
                          sparse_init_scale=args.sparse_init_scale, lr_schedule=args.lr_schedule,
                          sparse_args=args.sparse_args or {})
    results = run_benchmark(cfg)
    _say(format_table(results["rows"]))
    _say(format_fronts(results["fronts"]))
    if args.paper_metrics:
        _say(format_paper_table(results["rows"]))
    _say(f"\nwrote {Path(args.out) / 'results.json'}, results.md and tradeoff.png")
    return 0


def _train(args: argparse.Namespace) -> int:
    from art_generalist import GeneralistTrainer, SingleLearnerTrainer
    from art_generalist.data import load_dataset
    from art_generalist.models import get_model

    data = load_dataset(args.dataset, root=args.data_root, seed=args.seed,
                        n_train=None if args.n_train is None else args.n_train + args.n_val)
    eps = data.eps if args.eps is None else args.eps
    model = get_model(args.model or default_model(args.dataset), data.input_shape[0], data.nb_classes,
                      data.input_shape[-1])
    clf = build_classifier(model, data, lr=args.lr, device=args.device)
    budget = dict(eps=eps, eps_step=args.eps_step or madry_step(eps, args.max_iter), max_iter=args.max_iter,
                  verbose=not args.quiet, lr_schedule=args.lr_schedule)
    trainer = (GeneralistTrainer(clf, **budget) if args.method == "generalist"
               else SingleLearnerTrainer(clf, objective="pgd" if args.method == "pgd_at" else args.method, **budget))
    n_val = args.n_val
    x_val, y_val = data.x_train[:n_val], data.y_train[:n_val]
    out = Path(args.out)
    history = trainer.fit(data.x_train[n_val:], data.y_train[n_val:], nb_epochs=args.epochs,
                          batch_size=args.batch_size, validation_data=(x_val, y_val) if n_val else None,
                          checkpoint_dir=out / "checkpoints", checkpoint_every=args.checkpoint_every,
                          resume=args.resume)
    weights, meta = trainer.export(out / "model.safetensors")
    if distributed.is_main_process():
        (out / "history.json").write_text(json.dumps(history, indent=2, default=str) + "\n", encoding="utf-8")
    last = history[-1]
    _say(f"trained {args.method} for {args.epochs} epochs; last validation clean {last.get('val_clean_acc')}, "
          f"PGD {last.get('val_pgd_acc')}; wrote {weights} and {meta}")
    return 0


def _transfer(args: argparse.Namespace) -> int:
    from art_generalist.transfer.experiment import run_transfer

    rows = run_transfer(args)
    _say("| source | eps | mode | clean | PGD |")
    for r in rows:
        _say(f"| {r['method']} | {r['source_eps']:g} | {r['mode']} | {r['clean']:.2f} ± {r['clean_sd']:.2f} | "
             f"{r['robust']:.2f} ± {r['robust_sd']:.2f} |")
    _say(f"wrote {Path(args.out) / 'results.md'} and transfer.png")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from art_generalist.data import load_dataset
    from art_generalist.evaluation import evaluate
    from art_generalist.state.export import load_exported, read_metadata

    meta = read_metadata(args.model_path)
    clf = load_exported(args.model_path, device_type="gpu" if args.device.startswith("cuda") else "cpu")
    data = load_dataset(args.dataset, root=args.data_root, seed=args.seed, n_test=args.n_eval)
    eps = meta["threat_model"]["eps"] if args.eps is None else args.eps
    norm = "inf" if meta["threat_model"]["norm"] == "linf" else 2
    report = evaluate(clf, data.x_test, data.y_test, eps=eps, norm=norm,
                      attacks=tuple(a.strip() for a in args.attacks.split(",") if a.strip()),
                      aa_version=args.aa_version, pgd_steps=args.pgd_steps, seed=args.seed, device=args.device,
                      checks=None if args.checks == "none" else args.checks, model_name=str(args.model_path),
                      progress=not args.quiet)
    _say(report.summary())
    if args.out and distributed.is_main_process():
        report.to_json(args.out)
    return 0 if report.reliable else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
