"""The README's opening table: each method against ART Madry on the data we could run, paired.

Built from the committed benchmark results (``lab/results/``), never typed by hand:
``tests/test_verdict.py`` checks that README.md holds exactly what this script prints. For each
data set every report is one evaluation of the same test points (AutoAttack and PGD-20, worst case
per point), and each cell is the method's difference to ART Madry in points with the two-sided
exact McNemar p of the paired comparison.

    python lab/verdict.py            # print the table
    python lab/verdict.py --write    # and write it into README.md between the verdict markers
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from art_generalist.benchmark.paired import compare_reports
from art_generalist.state.files import read_json

ROOT = Path(__file__).resolve().parent.parent
#: (column title, results files holding the same evaluation; the first file with a method wins)
DATASETS = {
    "digits": ("digits, DigitsNet, 100 iterations, 359 points", ["lab/results/digits_controls/results.json"]),
    "fmnist": ("Fashion-MNIST, SmallCNN, 945 iterations, 1,000 points",
               ["lab/results/fmnist945_controls/results.json"]),  # merged: ../fmnist945_fronts, ours/, art/
}
#: (row label, benchmark method per data set); a data set without the method shows "not run"
ROWS = [
    ("ART Madry", {"digits": "art_madry", "fmnist": "art_madry"}),
    ("Generalist, defaults", {"digits": "generalist", "fmnist": "generalist@0.4"}),
    ("PGD-AT (our engine)", {"digits": "pgd_at", "fmnist": "pgd_at"}),
    ("PGD-AT + Generalist's EMA (the control)", {"digits": "pgd_ema", "fmnist": "pgd_ema"}),
    ("TRADES β = 6 (our engine)", {"digits": "trades", "fmnist": "trades"}),
    ("ART TRADES (β 6 on digits, 1 on Fashion-MNIST)", {"digits": "art_trades", "fmnist": "art_trades@1"}),
    ("ART AWP, γ = 0.01 (its authors' default)", {"digits": "art_awp", "fmnist": "art_awp"}),
    ("ART AWP, γ = 0.002", {"digits": "art_awp@0.002", "fmnist": "art_awp@0.002"}),
]
START, END = "<!-- verdict:start -->", "<!-- verdict:end -->"


def reports(files: list[str]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for name in files:
        for method, report in read_json(ROOT / name)["reports"].items():
            out.setdefault(method, report)
    return out


def _cells(method: str | None, reference: str, found: dict[str, dict]) -> tuple[str, str]:
    if method is None or method not in found:
        return "not run", "not run"
    compared = compare_reports(found[method], found[reference])
    return tuple(f"{c['diff_points']:+.1f} ({_p(c['p_value'])})" for c in compared.values())


def _p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.2f}" if p >= 0.1 else f"p = {p:.3f}"


def table(reference: str = "ART Madry") -> str:
    """Every row of :data:`ROWS` against the row labelled ``reference`` (its accuracies in %)."""
    found = {key: reports(files) for key, (_, files) in DATASETS.items()}
    ref = dict(ROWS)[reference]
    head = "| method | " + " | ".join(f"{title}: clean Δ | robust Δ" for title, _ in DATASETS.values()) + " |"
    lines = [head, "|---" * (1 + 2 * len(DATASETS)) + "|"]
    cells = [f"{100 * found[k][ref[k]]['clean_acc']:.1f} | {100 * found[k][ref[k]]['robust_acc']:.1f}"
             for k in DATASETS]
    lines.append(f"| **{reference}** (the reference: accuracy in %) | " + " | ".join(cells) + " |")
    for label, methods in ROWS:
        if label != reference:
            row = [" | ".join(_cells(methods.get(k), ref[k], found[k])) for k in DATASETS]
            lines.append(f"| {label} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def readme_table(text: str) -> str:
    match = re.search(re.escape(START) + r"\n?(.*?)\n?" + re.escape(END), text, re.S)
    if not match:
        raise ValueError(f"README.md lacks the markers {START} ... {END}")
    return match.group(1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--write", action="store_true", help="write the table into README.md")
    p.add_argument("--against", default="ART Madry", choices=[label for label, _ in ROWS],
                   help="the reference row (README.md: ART Madry)")
    args = p.parse_args()
    out = table(args.against)
    print(out)
    if args.write:
        if args.against != "ART Madry":
            raise SystemExit("README.md's table is against ART Madry.")
        readme = ROOT / "README.md"
        text = readme.read_text(encoding="utf-8")
        readme_table(text)  # (the markers are there)
        text = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: f"{START}\n{out}\n{END}", text, flags=re.S)
        readme.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
