"""``art-generalist``: benchmark, train and evaluate from the command line.

Every number is checked when the arguments are parsed: a count below its minimum, a zero or
negative step, ε or learning rate, nan or inf, an unknown device is refused with the flag's name
(exit code 2), never replaced by a default or run anyway. A mistake found later (a missing file or
data set, a value the library refuses) is one line on stderr and exit code 2; ``--debug`` shows the
traceback instead."""
from __future__ import annotations

import argparse
import functools
import math
import os
from typing import Any, NoReturn, Optional, Sequence

import torch

from art_generalist.benchmark import command as benchmark_command
from art_generalist.data import DATASETS
from art_generalist.evaluation.autoattack_adapter import AA_VERSIONS
from art_generalist.evaluation.runner import ATTACKS
from art_generalist.methods import registry
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
