"""``art-generalist``: benchmark, train, transfer and evaluate from the command line (flags in
:mod:`art_generalist.cli.flags`)."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

from art_generalist.benchmark import command as benchmark_command
from art_generalist.cli.flags import default_threads, parser
from art_generalist.core.attack import madry_step
from art_generalist.estimators import build_classifier
from art_generalist.methods import registry
from art_generalist.models import default_model
from art_generalist.parallel import ranks
from art_generalist.state.files import atomic_write_json, remove_stale_temporaries
from art_generalist.state.fingerprint import OtherRunError


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")  # other libraries: warnings only
    logging.getLogger("art_generalist").setLevel(logging.WARNING if args.quiet else logging.INFO)
    torch.set_num_threads(args.threads or default_threads())
    torch.manual_seed(args.seed)
    joined = not ranks.active()
    # under torchrun: join the process group
    args.device = ranks.init_from_env(args.device, timeout_s=args.collective_timeout)
    joined = joined and ranks.active()
    if not ranks.is_main_process():  # rank 0 prints, writes and logs; the others only compute
        logging.getLogger("art_generalist").setLevel(logging.WARNING)
        args.quiet = True
    try:
        if getattr(args, "download", False):
            _download(args)
        return {"benchmark": _benchmark, "train": _train, "evaluate": _evaluate,
                "transfer": _transfer}[args.command](args)
    except (FileExistsError, OtherRunError) as err:  # another run's files: say what to do, without a traceback
        if args.debug:
            raise
        hint = ("the run's own settings, or another --out" if isinstance(err, OtherRunError)
                else "--resume, --overwrite or another --out" if args.command == "train"
                else "--resume or another --out")
        print(f"art-generalist {args.command}: error: {err} (command line: {hint})", file=sys.stderr)
        return 2
    except (OSError, ValueError, TypeError, KeyError, FloatingPointError) as err:  # a user's mistake, in one line
        if args.debug:
            raise
        text = str(err).replace("Pass download=True", "Pass --download") if isinstance(err, FileNotFoundError) \
            else str(err)
        print(f"art-generalist {args.command}: error: {type(err).__name__}: {text} (--debug shows the traceback)",
              file=sys.stderr)
        return 2
    finally:
        if joined:
            ranks.barrier()
            torch.distributed.destroy_process_group()


def _download(args: argparse.Namespace) -> None:
    """Fetch the command's data sets into the data root first (rank 0; the others wait)."""
    from art_generalist.data import load_dataset

    names = ([args.source_dataset, args.target_dataset] if args.command == "transfer"
             else [args.dataset or "digits"])
    if ranks.is_main_process():
        for name in names:
            load_dataset(name, root=args.data_root, download=True)
    ranks.barrier()


def _say(text: str) -> None:
    """Print on rank 0 only (everywhere in one process)."""
    if ranks.is_main_process():
        print(text)


def _benchmark(args: argparse.Namespace) -> int:
    return benchmark_command.run(args, _say)


def _train(args: argparse.Namespace) -> int:
    from art_generalist.data import load_dataset
    from art_generalist.models import get_model

    data = load_dataset(args.dataset, root=args.data_root, seed=args.seed,
                        n_train=None if args.n_train is None else args.n_train + args.n_val)
    eps = data.eps if args.eps is None else args.eps
    model = get_model(args.model or default_model(args.dataset), data.input_shape[0], data.nb_classes,
                      data.input_shape[-1])
    clf = build_classifier(model, data, lr=args.lr, device=args.device)
    eps_step = madry_step(eps, args.max_iter) if args.eps_step is None else args.eps_step
    budget = dict(eps=eps, eps_step=eps_step, max_iter=args.max_iter,
                  verbose=not args.quiet, lr_schedule=args.lr_schedule)
    trainer = registry.get_method(args.method).build(clf, budget)
    n_val = args.n_val
    x_val, y_val = data.x_train[:n_val], data.y_train[:n_val]
    out = Path(args.out)
    if ranks.is_main_process():
        remove_stale_temporaries(out)  # what a write killed mid-way left
    history = trainer.fit(data.x_train[n_val:], data.y_train[n_val:], nb_epochs=args.epochs,
                          batch_size=args.batch_size, validation_data=(x_val, y_val) if n_val else None,
                          checkpoint_dir=out / "checkpoints", checkpoint_every=args.checkpoint_every,
                          resume=args.resume, overwrite=args.overwrite)
    recorded = {"dataset": data.name, "root": None if args.data_root is None else str(Path(args.data_root).resolve()),
                "seed": args.seed, "n_train": args.n_train, "n_val": n_val, "test_points": int(len(data.y_test))}
    weights, meta = trainer.export(out / "model.safetensors", data=recorded)
    if ranks.is_main_process():
        atomic_write_json(out / "history.json", history, indent=2, default=str)
    last = history[-1]
    scores = ("" if last.get("val_clean_acc") is None else
              f"; last validation ({n_val} points): clean {100 * last['val_clean_acc']:.1f}%"
              + ("" if last.get("val_pgd_acc") is None else f", PGD {100 * last['val_pgd_acc']:.1f}%"))
    _say(f"trained {args.method} on {data.name} for {args.epochs} epochs at eps {eps:g}{scores}; "
         f"wrote {weights} and {meta}")
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
    trained_on = meta.get("data") or {}  # what `train` recorded: the data set and its root
    name = args.dataset or trained_on.get("dataset") or "digits"
    root = args.data_root if args.data_root is not None else trained_on.get("root")
    data = load_dataset(name, root=root, seed=args.seed, n_test=args.n_eval, cap_test=True)
    if len(data.y_test) < args.n_eval:
        _say(f"note: {name}'s test split holds {len(data.y_test)} points; evaluating all of them "
             f"(--n-eval {args.n_eval} asked for more)")
    eps = meta["threat_model"]["eps"] if args.eps is None else args.eps
    norm = "inf" if meta["threat_model"]["norm"] == "linf" else 2
    report = evaluate(clf, data.x_test, data.y_test, eps=eps, norm=norm,
                      attacks=tuple(a.strip() for a in args.attacks.split(",") if a.strip()),
                      aa_version=args.aa_version, pgd_steps=args.pgd_steps, seed=args.seed, device=args.device,
                      checks=None if args.checks == "none" else args.checks, model_name=str(args.model_path),
                      progress=not args.quiet)
    _say(report.summary())
    if args.out and ranks.is_main_process():
        report.to_json(args.out)
    return 0 if report.reliable else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
