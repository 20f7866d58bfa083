"""Merge benchmark runs of one configuration that trained different methods (for example two
processes, one per front), then recompute dominance, the front verdict, the table and the plot.

    python lab/merge_runs.py RUN_GENERALIST RUN_ART --out lab/results/NAME

Every run must have the same settings apart from its methods (same data split, test points,
seed, budget and evaluation), and each method may come from one run only.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from art_generalist.benchmark import fronts
from art_generalist.benchmark.run import (
    RUNTIME_FIELDS,
    BenchmarkConfig,
    _epoch_ratios,
    format_fronts,
    format_table,
    write_results,
)
from art_generalist.state.files import read_json, remove_stale_temporaries

IGNORED = RUNTIME_FIELDS  # the settings that do not change results (benchmark.run)


def _config(run: dict) -> dict:
    """A run's configuration, with the defaults of options added after it was written."""
    return {**json.loads(json.dumps(dict(vars(BenchmarkConfig())), default=str)), **run["config"]}


def merge(runs: list[dict]) -> dict:
    base = runs[0]
    for other in runs[1:]:
        mine, theirs = _config(base), _config(other)
        differ = sorted(k for k in set(mine) | set(theirs) if k not in IGNORED and mine.get(k) != theirs.get(k))
        if differ or base["n_eval"] != other["n_eval"] or base["n_train"] != other["n_train"]:
            raise SystemExit(f"The runs differ in {differ or 'their data'}; only runs of one configuration merge.")
    reports, rows, methods = {}, [], []
    for run in runs:
        for method, report in run["reports"].items():
            if method in reports:
                raise SystemExit(f"{method} was trained in more than one run.")
            reports[method] = report
            methods.append(method)
        rows += run["rows"]
    fronts.mark_dominated(rows)
    config = dict(base["config"], methods=methods)
    return {**base, "config": config, "rows": rows, "reports": reports, "fronts": fronts.front_verdict(rows),
            "epoch_time_ratio_vs_art_madry": _epoch_ratios(rows), "complete": all(r["complete"] for r in runs),
            "merged_from": [r["config"]["out"] for r in runs], "machine": [r["machine"] for r in runs]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="output folders of `art-generalist benchmark`")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    runs = [read_json(Path(d) / "results.json") for d in args.runs]
    merged = merge(runs)
    from record import run_record  # here, not at the top: tests import this file by path, without lab/ on sys.path

    merged["record"] = run_record()  # who merged, when, from which commit
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    write_results(out, merged)
    print(format_table(merged["rows"]))
    print(format_fronts(merged["fronts"]))


if __name__ == "__main__":
    main()
