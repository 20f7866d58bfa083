"""Trade-off fronts: a method with a knob is a curve, not a point.

A benchmark method is a family name, optionally with its knob: ``generalist@0.7`` is Generalist
with the final β 0.7 (β: (0, E/3, 2E/3, E) → (1, 1, 1, 0.7)), ``art_trades@3`` and ``trades@3``
are TRADES with β = 3, ``flying_bird@0.2`` (and ``robust_bird``, ``flying_bird_plus``,
``generalist+flying_bird``) is sparse training at density 0.2 (80 % sparse). Points are (clean,
robust) accuracies on the same test points, each with a Wilson 95% interval; a point is dominated
when a point of another family is at least as good on both axes and better on one.
"""
from __future__ import annotations

import math
from typing import Optional

from art_generalist.methods import registry
from art_generalist.methods.registry import generalist_beta  # noqa: F401 (the fronts' β knots)

#: family -> its knob (how the knob is read), from the method registry's benchmark methods
KNOBS = {m.name: m.knob for m in registry.methods() if m.benchmark and m.knob is not None}

#: The sweep of ``art-generalist benchmark --fronts``.
FRONT_METHODS = ("generalist@1.0", "generalist@0.7", "generalist@0.4", "generalist@0.2",
                 "art_trades@1", "art_trades@3", "art_trades@6", "art_madry",
                 "trades_ema@1", "trades_ema@3", "trades_ema@6", "pgd_ema", "art_awp")


def split_method(method: str, families: tuple[str, ...]) -> tuple[str, Optional[float]]:
    """``"generalist@0.7"`` -> ``("generalist", 0.7)``; ``"art_madry"`` -> ``("art_madry", None)``."""
    family, _, knob = method.partition("@")
    if family not in families:
        raise ValueError(f"Unknown method {method!r}: choose from {list(families)}, optionally with a knob "
                         f"(@value) for {sorted(KNOBS)}.")
    if not knob:
        return family, None
    if family not in KNOBS:
        raise ValueError(f"Method {family!r} has no knob to sweep (got {method!r}).")
    try:
        value = float(knob)
    except ValueError:
        raise ValueError(f"The knob of {method!r} must be a number.") from None
    if KNOBS[family] == registry.DENSITY and not 0.0 < value <= 1.0:
        raise ValueError(f"The density of {method!r} must lie in (0, 1] (the fraction of weights kept).")
    if KNOBS[family] == registry.FINAL_BETA and not 0.0 <= value <= 1.0:
        raise ValueError(f"Generalist's final β must lie in [0, 1], got {method!r}.")
    if KNOBS[family] == registry.AWP_GAMMA and not 0.0 < value < math.inf:
        raise ValueError(f"AWP's γ must be a finite number > 0, got {method!r}.")
    if not 0.0 <= value < math.inf:
        raise ValueError(f"TRADES' β must be a finite number >= 0, got {method!r}.")
    return family, value


def wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``p`` measured on ``n`` points."""
    if n <= 0:
        return float("nan"), float("nan")
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def robust_of(row: dict) -> float:
    """The robust axis: AutoAttack accuracy, else the worst case over the attacks run."""
    return row["autoattack"] if row.get("autoattack") is not None else row["worst_case"]


def mark_dominated(rows: list[dict]) -> None:
    """Set ``row["dominated_by"]``: the methods of other families that dominate each row."""
    for r in rows:
        r["dominated_by"] = [
            o["method"] for o in rows
            if o["family"] != r["family"] and not o.get("base_learner")
            and o["clean"] >= r["clean"] and robust_of(o) >= robust_of(r)
            and (o["clean"] > r["clean"] or robust_of(o) > robust_of(r))]


def front_verdict(rows: list[dict], family: str = "generalist") -> dict[str, dict]:
    """For every other family: how many of its points ``family``'s points match or beat on both
    axes (``covered``), how many they strictly dominate, and how many of ``family``'s points it
    dominates. ``family``'s front dominates when it covers every point, strictly dominates at least
    one, and none of its own points is dominated."""
    ours = [r for r in rows if r["family"] == family and not r.get("base_learner")]
    out = {}
    for other in sorted({r["family"] for r in rows} - {family}):
        theirs = [r for r in rows if r["family"] == other and not r.get("base_learner")]
        if not theirs:
            continue
        covered = sum(any(o["clean"] >= t["clean"] and robust_of(o) >= robust_of(t) for o in ours) for t in theirs)
        strictly = sum(bool(t["dominated_by"]) and any(m in t["dominated_by"] for m in (o["method"] for o in ours))
                       for t in theirs)
        beaten = sum(bool(set(r["dominated_by"]) & {t["method"] for t in theirs}) for r in ours)
        out[other] = {"their_points": len(theirs), "covered_by_" + family: covered,
                      "strictly_dominated_by_" + family: strictly, family + "_points_dominated_by_them": beaten,
                      "front_dominates": covered == len(theirs) and beaten == 0 and strictly > 0}
    return out


def plot(path, rows: list[dict], title: str, robust_label: str, n: int) -> None:
    """Clean vs robust accuracy, one line per family (sorted by clean accuracy), Wilson 95% bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    families = list(dict.fromkeys(r["family"] for r in rows if not r.get("base_learner")))
    for i, family in enumerate(families):
        pts = sorted((r for r in rows if r["family"] == family and not r.get("base_learner")), key=lambda r: r["clean"])
        color = f"C{i}"
        xs, ys = [100 * r["clean"] for r in pts], [100 * robust_of(r) for r in pts]
        ax.plot(xs, ys, "-" if len(pts) > 1 else "", color=color, alpha=0.6, label=family)
        for r, x, y in zip(pts, xs, ys):
            cl, ch = wilson(r["clean"], n)
            rl, rh = wilson(robust_of(r), n)
            ax.errorbar(x, y, xerr=[[x - 100 * cl], [100 * ch - x]], yerr=[[y - 100 * rl], [100 * rh - y]],
                        fmt="o", color=color, mfc="none" if not r["reliable"] else color, capsize=2, ms=5)
            label = r["method"].split("@")[1] if "@" in r["method"] else ""
            if not r["reliable"]:
                label += " (UNRELIABLE)"
            if label:
                ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color=color)
    for r in rows:
        if r.get("base_learner"):
            ax.scatter(100 * r["clean"], 100 * robust_of(r), marker="x", color="grey", s=30)
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel(robust_label)
    ax.set_title(title + (" (x: Generalist teachers)" if any(r.get("base_learner") for r in rows) else ""), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
