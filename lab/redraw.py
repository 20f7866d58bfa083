"""Redraw the figures of finished runs from their ``results.json``, as the package drew them.

Only the figures BENCHMARKS.md shows are committed; the others (``tradeoff.png``, ``sparse.png``,
``transfer.png`` of every other run under ``lab/results/``) are ignored by git and rebuilt here:

    python lab/redraw.py                                  # every run under lab/results/, missing figures
    python lab/redraw.py lab/results/fmnist_sparse_overfit --force    # these runs, figures redrawn

A benchmark run (``art-generalist benchmark``, or ``lab/merge_runs.py``) gets ``tradeoff.png``
and, with the paper's metrics, ``sparse.png``: its results go through the package's own writer
into a temporary folder and only the figures are copied back, so titles and styles are the
package's and ``results.json``/``results.md`` are left as they are. A transfer run
(``art-generalist transfer``) gets ``transfer.png``.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from art_generalist.benchmark.report import write_results
from art_generalist.state.files import read_json
from art_generalist.transfer.experiment import plot as plot_transfer

RESULTS = Path(__file__).resolve().parent / "results"
FIGURES = ("tradeoff.png", "sparse.png")


def redraw(folder: Path, force: bool = False) -> list[Path]:
    """Draw the figures of the run in ``folder``; returns the files written."""
    path = folder / "results.json"
    if not path.is_file():
        return []
    results = read_json(path)
    written = []
    if {"config", "rows", "reports"} <= set(results):  # a benchmark run
        # rows of runs older than the fronts (BENCHMARKS.md §1-2) carry no "n" and "family": the plot
        # then has today's style (Wilson intervals, one line per family) on the same numbers
        rows = [{"n": results["n_eval"], "family": r["method"].partition("@")[0], **r} for r in results["rows"]]
        with tempfile.TemporaryDirectory() as tmp:
            write_results(Path(tmp), {**results, "rows": rows})
            for name in FIGURES:
                drawn, target = Path(tmp) / name, folder / name
                if drawn.is_file() and (force or not target.exists()):
                    shutil.copyfile(drawn, target)
                    written.append(target)
    elif {"args", "runs", "rows"} <= set(results):  # a transfer run
        target = folder / "transfer.png"
        if results["rows"] and (force or not target.exists()):
            plot_transfer(target, results["rows"], argparse.Namespace(**results["args"]))
            written.append(target)
    return written


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="*", type=Path,
                   help="run folders holding a results.json (default: every one under lab/results/)")
    p.add_argument("--force", action="store_true", help="redraw figures that exist too")
    args = p.parse_args()
    folders = args.folders or sorted(f.parent for f in RESULTS.rglob("results.json"))
    for folder in folders:
        for target in redraw(folder, force=args.force):
            print(f"wrote {target}")


if __name__ == "__main__":
    main()
