"""Paired comparison of two methods of one benchmark run (the same test points).

For clean and worst-case robust accuracy: the difference in points, the discordant pairs (points
only one method gets right) and the two-sided exact McNemar p-value, i.e. whether the difference
is distinguishable from noise on these points.

    python lab/paired.py lab/results/fashion_mnist/results.json generalist art_madry
"""
from __future__ import annotations

import argparse
from math import comb


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for ``b`` and ``c`` discordant pairs."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(comb(n, i) for i in range(min(b, c) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def compare(flags_a: list[bool], flags_b: list[bool]) -> dict:
    if len(flags_a) != len(flags_b):
        raise ValueError("The two methods were evaluated on different numbers of points.")
    only_a = sum(a and not b for a, b in zip(flags_a, flags_b))
    only_b = sum(b and not a for a, b in zip(flags_a, flags_b))
    n = len(flags_a)
    return {"n": n, "diff_points": 100 * (only_a - only_b) / n, "only_a": only_a, "only_b": only_b,
            "p_value": mcnemar_exact(only_a, only_b)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", help="results.json written by `art-generalist benchmark`")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--other", default=None, help="take method b from this results.json (same points and seed)")
    args = p.parse_args()
    from art_generalist.state.files import read_json

    res_a = read_json(args.results)
    res_b = read_json(args.other) if args.other else res_a
    ra, rb = res_a["reports"][args.a], res_b["reports"][args.b]
    if ra["settings"] != rb["settings"] or ra["n"] != rb["n"] or ra["seed"] != rb["seed"]:
        raise SystemExit("The two reports were not evaluated the same way.")
    for kind in ("clean", "robust"):
        c = compare(ra["per_example"][kind], rb["per_example"][kind])
        print(f"{kind:6s}: {args.a} − {args.b} = {c['diff_points']:+.1f} points on {c['n']} points; "
              f"only {args.a} right: {c['only_a']}, only {args.b} right: {c['only_b']}; "
              f"exact McNemar p = {c['p_value']:.3f}")


if __name__ == "__main__":
    main()
