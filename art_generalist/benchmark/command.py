"""``art-generalist benchmark``: the subcommand's own flags and its run.

The flags shared with ``train`` (data, model, ε, training budget, runtime) and the number types
that refuse bad values at parse time are :mod:`art_generalist.cli`'s; this module adds the rest.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any, Callable

from art_generalist.benchmark.fronts import FRONT_METHODS
from art_generalist.benchmark.run import METHODS, RUNTIME_FIELDS, BenchmarkConfig, format_fronts, format_table
from art_generalist.benchmark.sparse_metrics import format_paper_table
from art_generalist.evaluation.autoattack_adapter import AA_VERSIONS
from art_generalist.methods.generalist import GeneralistConfig


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


def add_arguments(b: argparse.ArgumentParser, count: Callable[[str], int]) -> None:
    """The benchmark's own flags; ``count`` is the argparse type of an integer >= 1."""
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
    b.add_argument("--n-eval", type=count, default=300, help="test points evaluated")
    b.add_argument("--aa-version", default="fast", choices=sorted(AA_VERSIONS),
                   help="AutoAttack: standard, fast (APGD-CE + APGD-T), apgd-ce, ...")
    b.add_argument("--pgd-steps", type=count, default=20)
    b.add_argument("--per-iteration-schedules", action="store_true",
                   help="every method's lr (and Generalist's β) follows the schedule at fractional epochs "
                        "(ART's trainers in --art-lr-chunks chunks per epoch); for runs of a few epochs")
    b.add_argument("--art-lr-chunks", type=count, default=20,
                   help="ART fit calls per epoch with --per-iteration-schedules")
    b.add_argument("--generalist-args", default=None, type=_generalist_options,
                   help="Generalist options as a JSON object, e.g. "
                        "'{\"distribute_every\": 0.125, \"beta_schedule\": [[0, 0.333, 0.667, 1], [1, 1, 1, 0.2]]}'; "
                        f"options: {', '.join(n for n in GeneralistConfig.flat_names() if n != 'learners')}")
    b.add_argument("--no-base-learners", action="store_true", help="skip evaluating Generalist's base learners")
    may_differ = ", ".join("--" + f.replace("_", "-") for f in sorted(RUNTIME_FIELDS - {"resume", "verbose"}))
    b.add_argument("--resume", action="store_true",
                   help="keep the methods already finished in --out and resume the others from their checkpoints; "
                        "refused, listing the differences, when a setting differs from the stored run's (all but "
                        f"{may_differ} and --quiet must match); a finished run's results are left as they are")
    b.add_argument("--out", default="results")


#: BenchmarkConfig fields that no flag sets (library callers pass them)
LIBRARY_ONLY = frozenset({"momentum", "weight_decay", "trades_beta"})
#: fields whose flag parses into another form
DERIVED = frozenset({"methods", "verbose", "base_learners", "generalist", "sparse_args"})


def config(args: argparse.Namespace) -> BenchmarkConfig:
    """The :class:`BenchmarkConfig` of parsed arguments: every field of the same name is taken as
    parsed (the flags and the config are one list of names, checked by the tests), the derived
    ones are converted here."""
    names = {f.name for f in dataclasses.fields(BenchmarkConfig)} - DERIVED - LIBRARY_ONLY
    missing = sorted(n for n in names if not hasattr(args, n))
    if missing:
        raise AttributeError(f"BenchmarkConfig fields without a flag: {missing}")
    methods = FRONT_METHODS if args.fronts else tuple(m.strip() for m in args.methods.split(",") if m.strip())
    return BenchmarkConfig(**{k: getattr(args, k) for k in sorted(names)}, methods=methods, verbose=not args.quiet,
                           base_learners=not args.no_base_learners, generalist=args.generalist_args or {},
                           sparse_args=args.sparse_args or {})


def run(args: argparse.Namespace, say: Callable[[str], Any]) -> int:
    """Run the benchmark of ``args``; ``say`` prints (rank 0 only)."""
    from art_generalist.benchmark.run import run_benchmark

    path = Path(args.out) / "results.json"
    stamp = path.stat().st_mtime_ns if path.is_file() else None
    results = run_benchmark(config(args))
    say(format_table(results["rows"]))
    say(format_fronts(results["fronts"]))
    if args.paper_metrics:
        say(format_paper_table(results["rows"]))
    if stamp is not None and path.stat().st_mtime_ns == stamp:
        say(f"\n{path}: every method had finished in an earlier run; left as it was")
    else:
        say(f"\nwrote {path}, results.md and tradeoff.png")
    return 0
