"""Paired comparison of two methods of one benchmark run (the same test points).

For clean and worst-case robust accuracy: the difference in points, the discordant pairs (points
only one method gets right) and the two-sided exact McNemar p-value, i.e. whether the difference
is distinguishable from noise on these points.

    python lab/paired.py lab/results/fashion_mnist/results.json generalist art_madry
"""
from __future__ import annotations

import argparse

from art_generalist.benchmark.paired import compare_reports


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
    try:
        compared = compare_reports(res_a["reports"][args.a], res_b["reports"][args.b])
    except ValueError as err:
        raise SystemExit(str(err)) from None
    for kind, c in compared.items():
        print(f"{kind:6s}: {args.a} − {args.b} = {c['diff_points']:+.1f} points on {c['n']} points; "
              f"only {args.a} right: {c['only_a']}, only {args.b} right: {c['only_b']}; "
              f"exact McNemar p = {c['p_value']:.3f}")


if __name__ == "__main__":
    main()
