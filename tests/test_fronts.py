"""Trade-off fronts: method knobs, Wilson intervals, dominance and the front verdict."""
from __future__ import annotations

import math

import pytest

from art_generalist.benchmark import fronts
from art_generalist.benchmark.run import METHODS, BenchmarkConfig


def _row(method, clean, aa, base_learner=False):
    family = method.split("@")[0].split(":")[0]
    return {"method": method, "family": family, "clean": clean, "autoattack": aa, "worst_case": aa,
            "reliable": True, "base_learner": base_learner}


@pytest.mark.parametrize("method, expected", [
    ("generalist", ("generalist", None)), ("generalist@0.7", ("generalist", 0.7)),
    ("art_trades@3", ("art_trades", 3.0)), ("trades@1", ("trades", 1.0)), ("art_madry", ("art_madry", None)),
])
def test_methods_and_knobs(method, expected):
    assert fronts.split_method(method, METHODS) == expected


@pytest.mark.parametrize("method, match", [
    ("fgsm", "Unknown method"), ("art_madry@2", "no knob"), ("generalist@x", "number"),
    ("generalist@1.5", r"\[0, 1\]"), ("art_trades@-1", ">= 0"),
])
def test_bad_methods_are_refused(method, match):
    with pytest.raises(ValueError, match=match):
        fronts.split_method(method, METHODS)


def test_config_refuses_duplicates_and_conflicting_beta():
    with pytest.raises(ValueError, match="distinct"):
        BenchmarkConfig(methods=("generalist@0.4", "generalist@0.4"))
    with pytest.raises(ValueError, match="final β"):
        BenchmarkConfig(methods=("generalist@0.4",), generalist={"beta_schedule": "official"})
    assert fronts.generalist_beta(0.2) == ((0.0, 1 / 3, 2 / 3, 1.0), (1.0, 1.0, 1.0, 0.2))


def test_wilson_interval():
    lo, hi = fronts.wilson(0.5, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    assert fronts.wilson(0.0, 24)[0] == 0.0 and fronts.wilson(1.0, 24)[1] == 1.0
    assert all(math.isnan(v) for v in fronts.wilson(0.5, 0))


def test_dominance_marks_only_other_families_and_the_verdict():
    rows = [_row("generalist@1.0", 0.80, 0.60), _row("generalist@0.4", 0.84, 0.55),
            _row("generalist@0.4:teacher:robust", 0.99, 0.99, base_learner=True),
            _row("art_madry", 0.80, 0.58), _row("art_trades@1", 0.86, 0.50), _row("art_trades@6", 0.78, 0.61)]
    fronts.mark_dominated(rows)
    by = {r["method"]: r["dominated_by"] for r in rows}
    assert by["art_madry"] == ["generalist@1.0"]  # same clean, higher robust
    assert by["generalist@1.0"] == [] and by["generalist@0.4"] == []  # own family never counts
    assert by["art_trades@1"] == [] and by["art_trades@6"] == []  # teachers never dominate
    verdict = fronts.front_verdict(rows)
    assert verdict["art_madry"]["front_dominates"] is True
    assert verdict["art_trades"] == {"their_points": 2, "covered_by_generalist": 0,
                                     "strictly_dominated_by_generalist": 0,
                                     "generalist_points_dominated_by_them": 0, "front_dominates": False}


def test_ties_are_not_domination():
    rows = [_row("generalist@0.4", 0.5, 0.4), _row("art_madry", 0.5, 0.4)]
    fronts.mark_dominated(rows)
    assert rows[0]["dominated_by"] == rows[1]["dominated_by"] == []
    assert fronts.front_verdict(rows)["art_madry"]["front_dominates"] is False


def test_fronts_flag_of_the_cli():
    from art_generalist.cli import parser

    args = parser().parse_args(["benchmark", "--fronts"])
    assert args.fronts and len(fronts.FRONT_METHODS) == 8
    assert all(fronts.split_method(m, METHODS) for m in fronts.FRONT_METHODS)
