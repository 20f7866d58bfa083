"""Paired comparison of two models evaluated on the same test points.

For clean and worst-case robust accuracy: the difference in points, the discordant pairs (points
only one model gets right) and the two-sided exact McNemar p-value, i.e. whether the difference
is distinguishable from noise on these points. Reports come from ``results.json`` files of
``art-generalist benchmark`` (``reports[method]["per_example"]``); two reports compare only when
they were evaluated the same way (settings, points and seed).
"""
from __future__ import annotations

from math import comb
from typing import Mapping, Sequence

KINDS = ("clean", "robust")


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for ``b`` and ``c`` discordant pairs."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(comb(n, i) for i in range(min(b, c) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def compare(flags_a: Sequence[bool], flags_b: Sequence[bool]) -> dict:
    """``diff_points`` (a − b, in points), ``only_a``, ``only_b``, ``p_value`` and ``n``."""
    if len(flags_a) != len(flags_b):
        raise ValueError("The two methods were evaluated on different numbers of points.")
    only_a = sum(bool(a) and not b for a, b in zip(flags_a, flags_b))
    only_b = sum(bool(b) and not a for a, b in zip(flags_a, flags_b))
    n = len(flags_a)
    return {"n": n, "diff_points": 100 * (only_a - only_b) / n, "only_a": only_a, "only_b": only_b,
            "p_value": mcnemar_exact(only_a, only_b)}


def compare_reports(a: Mapping, b: Mapping) -> dict[str, dict]:
    """:func:`compare` of two evaluation reports, per kind (``clean``, ``robust``: the worst case)."""
    if a["settings"] != b["settings"] or a["n"] != b["n"] or a["seed"] != b["seed"]:
        raise ValueError("The two reports were not evaluated the same way (settings, points or seed differ).")
    return {kind: compare(a["per_example"][kind], b["per_example"][kind]) for kind in KINDS}
