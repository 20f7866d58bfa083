"""``art-generalist``: benchmark, train and evaluate from the command line.

Every number is checked when the arguments are parsed: a count below its minimum, a zero or
negative step, ε or learning rate, nan or inf, an unknown device is refused with the flag's name
(exit code 2), never replaced by a default or run anyway. A mistake found later (a missing file or
data set, a value the library refuses) is one line on stderr and exit code 2; ``--debug`` shows the
traceback instead."""
from __future__ import annotations

import argparse
import functools
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any, NoReturn, Optional, Sequence

import torch

from art_generalist.benchmark import command as benchmark_command
from art_generalist.core.attack import madry_step
from art_generalist.data import DATASETS
from art_generalist.estimators import build_classifier
from art_generalist.evaluation.autoattack_adapter import AA_VERSIONS
from art_generalist.evaluation.runner import ATTACKS
from art_generalist.methods import registry
from art_generalist.models import default_model
from art_generalist.parallel import ranks
from art_generalist.state.files import atomic_write_json, remove_stale_temporaries
from art_generalist.state.fingerprint import OtherRunError
from art_generalist.transfer.experiment import MODES


def _number(kind: type, low: float, strict: bool = False) -> Any:
    """An argparse type: a finite ``kind`` (int or float) >= ``low`` (> ``low`` when ``strict``)."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not math.isfinite(value) or value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"must be a finite number {'>' if strict else '>='} {low:g}, got {text!r}")
        return value
    return parse


COUNT, NONNEGATIVE, POSITIVE, NONNEGATIVE_FLOAT = _number(int, 1), _number(int, 0), _number(float, 0, True), \
    _number(float, 0)


def _listed(item: Any) -> Any:
    """An argparse type: a comma list whose every value ``item`` accepts (the text is kept as given)."""
    def parse(text: str) -> str:
        for value in (v.strip() for v in text.split(",")):
            if value:
                item(value)
        return text
    return parse


def _names(allowed: Sequence[str]) -> Any:
    """An argparse type: a comma list of distinct names from ``allowed``."""
    def parse(text: str) -> str:
        names = [v.strip() for v in text.split(",") if v.strip()]
        if not names or len(set(names)) != len(names) or any(n not in allowed for n in names):
            raise argparse.ArgumentTypeError(f"a comma list of distinct names from {list(allowed)}, got {text!r}")
        return text
    return parse


def _device(text: str) -> str:
    """cpu, cuda or cuda:N that this machine has: ART's classifiers would run anything else on the CPU."""
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device: use cpu, cuda or cuda:N") from None
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"{text!r}: ART's PyTorch classifiers run on cpu or cuda only")
    if device.type == "cuda" and (count == 0 or (device.index or 0) >= count):
        raise argparse.ArgumentTypeError(f"{text!r}: this machine has {count} CUDA device(s)")
    return text


def default_threads() -> int:
    """The CPU cores this process may run on (``os.sched_getaffinity``), so that torch's threads do
    not outnumber them on a shared or restricted machine."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity on this platform
        return max(1, os.cpu_count() or 1)


def _common(p: argparse.ArgumentParser, dataset: Optional[str] = "digits") -> None:
    p.add_argument("--dataset", default=dataset, choices=sorted(DATASETS),
                   help=None if dataset else "default: the data set the model was trained on (its export's "
                                             "metadata), else digits")
    p.add_argument("--download", action="store_true",
                   help="let torchvision download a missing data set into the data root")
    p.add_argument("--model", default=None, help="model registry name (default: per data set)")
    p.add_argument("--eps", type=POSITIVE, default=None,
                   help="ε > 0 in input units, [0, 1] for the bundled data sets (default: per data set)")
    _runtime(p)


def _runtime(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", default=None, help="default: $ART_GENERALIST_DATA")
    p.add_argument("--device", type=_device, default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu, cuda or cuda:N")
    p.add_argument("--seed", type=NONNEGATIVE, default=0)
    p.add_argument("--threads", type=COUNT, default=None,
                   help="torch CPU threads (default: the cores this process may use; on a busy machine fewer "
                        "threads can run faster, see BENCHMARKS.md)")
    p.add_argument("--collective-timeout", type=POSITIVE, default=None, metavar="SECONDS",
                   help="under torchrun: seconds a collective may wait for the other ranks before the run fails "
                        "(default: $ART_GENERALIST_COLLECTIVE_TIMEOUT, else torch's)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error, not one line")


def _training(p: argparse.ArgumentParser) -> None:
    p.add_argument("--epochs", type=COUNT, default=10)
    p.add_argument("--eps-step", type=POSITIVE, default=None, help="default 2.5·eps/max_iter")
    p.add_argument("--max-iter", type=COUNT, default=10)
    p.add_argument("--batch-size", type=COUNT, default=128)
    p.add_argument("--lr", type=POSITIVE, default=0.05)
    p.add_argument("--lr-schedule", default="official", choices=["official", "multistep", "constant"],
                   help="lr factor over the budget: official (Generalist's: 1, 1, 0.1, 0.01 linear through 0, "
                        "E/3, 2E/3, E), multistep (x0.1 after E/2 and 3E/4, the sparse paper's), constant")
    p.add_argument("--n-train", type=COUNT, default=None, help="training subset size (default: all)")
    p.add_argument("--n-val", type=NONNEGATIVE, default=200, help="validation points taken from the training split")


def _transfer_parser(sub: Any) -> None:
    t = sub.add_parser("transfer", help="robust transfer reproduction: sources at several eps, fine-tuned "
                       "fixed-feature and full on a target set, a table and a figure (resumable)")
    _runtime(t)
    t.add_argument("--download", action="store_true", help="let torchvision download missing data sets")
    t.add_argument("--source-dataset", default="fashion_mnist")
    t.add_argument("--target-dataset", default="mnist")
    t.add_argument("--model", default="smallcnn", help="registry model of the sources")
    t.add_argument("--source-eps", default="0,0.05,0.1,0.2", type=_listed(NONNEGATIVE_FLOAT),
                   help="comma list; 0 = standard training")
    t.add_argument("--generalist-eps", default="0.1", type=_listed(POSITIVE),
                   help="comma list of eps for Generalist sources ('' for none)")
    t.add_argument("--source-epochs", type=COUNT, default=5)
    t.add_argument("--source-n-train", type=COUNT, default=10000)
    t.add_argument("--max-iter", type=COUNT, default=5, help="PGD steps of source training")
    t.add_argument("--target-n-train", type=COUNT, default=2000)
    t.add_argument("--target-epochs", type=COUNT, default=6)
    t.add_argument("--modes", default="fixed-feature,full", type=_names(MODES))
    t.add_argument("--seeds", default="0,1,2", type=_listed(NONNEGATIVE))
    t.add_argument("--lr-grid", default="0.01,0.001", type=_listed(POSITIVE))
    t.add_argument("--target-eps", type=POSITIVE, default=0.1, help="eps of the downstream PGD evaluation")
    t.add_argument("--pgd-steps", type=COUNT, default=20)
    t.add_argument("--n-eval", type=COUNT, default=1000)
    t.add_argument("--out", default="transfer_out")


class _Parser(argparse.ArgumentParser):
    """argparse with its errors in one line (the usage is one ``--help`` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (--help lists the flags and their defaults)\n")


def parser() -> argparse.ArgumentParser:
    root = _Parser(prog="art-generalist", description=__doc__)
    sub = root.add_subparsers(dest="command", required=True)
    sub.add_parser = functools.partial(sub.add_parser, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    b = sub.add_parser("benchmark", help="Generalist vs ART Madry vs ART TRADES at the same budget")
    _common(b)
    _training(b)
    benchmark_command.add_arguments(b, count=COUNT)
    t = sub.add_parser("train", help="train one method, checkpoint, export the model")
    _common(t)
    _training(t)
    t.add_argument("--method", default="generalist", choices=list(registry.method_names(train=True)))
    t.add_argument("--out", default="runs/train")
    t.add_argument("--checkpoint-every", type=COUNT, default=1)
    t.add_argument("--resume", action="store_true", help="continue the run in --out (refused if its settings differ)")
    t.add_argument("--overwrite", action="store_true", help="delete the checkpoints another run left in --out")
    _transfer_parser(sub)
    e = sub.add_parser("evaluate", help="evaluate an exported model (clean, PGD, CW, AutoAttack, checks)")
    _common(e, dataset=None)
    e.add_argument("model_path", help="a .safetensors file written by `train` or `trainer.export`")
    e.add_argument("--n-eval", type=COUNT, default=1000, help="test points (at most the test split's size)")
    e.add_argument("--attacks", default="pgd,cw,autoattack", type=_names(ATTACKS))
    e.add_argument("--aa-version", default="standard", choices=sorted(AA_VERSIONS))
    e.add_argument("--pgd-steps", type=COUNT, default=50)
    e.add_argument("--checks", default="cheap", choices=["cheap", "all", "none"])
    e.add_argument("--out", default=None, help="write the report as JSON here")
    return root


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
    data = load_dataset(name, root=root, seed=args.seed)
    n_eval = args.n_eval
    if n_eval > len(data.y_test):
        _say(f"note: {name}'s test split holds {len(data.y_test)} points; evaluating all of them "
             f"(--n-eval {n_eval} asked for more)")
        n_eval = len(data.y_test)
    if n_eval < len(data.y_test):
        data = load_dataset(name, root=root, seed=args.seed, n_test=n_eval)
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
