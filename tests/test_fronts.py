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
    ("art_awp@0.005", ("art_awp", 0.005)),
])
def test_methods_and_knobs(method, expected):
    assert fronts.split_method(method, METHODS) == expected


@pytest.mark.parametrize("method, match", [
    ("fgsm", "Unknown method"), ("art_madry@2", "no knob"), ("generalist@x", "number"),
    ("generalist@1.5", r"\[0, 1\]"), ("art_trades@-1", ">= 0"), ("art_trades@inf", "finite"),
    ("art_awp@0", "AWP's γ must be a finite number > 0"),
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
    assert args.fronts and len(fronts.FRONT_METHODS) == 13  # with the weight-averaged controls and AWP
    assert all(fronts.split_method(m, METHODS) for m in fronts.FRONT_METHODS)


def test_merge_runs_of_one_configuration(tmp_path):
    import importlib.util

    from tests.conftest import REPO_ROOT

    spec = importlib.util.spec_from_file_location("merge_runs", REPO_ROOT / "lab" / "merge_runs.py")
    merge_runs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(merge_runs)

    def run(out, rows):
        config = {"dataset": "digits", "model": "digits_net", "eps": 0.3, "epochs": 2, "eps_step": 0.075,
                  "max_iter": 2, "aa_version": "fast", "pgd_steps": 20, "seed": 0, "lr": 0.05,
                  "per_iteration_schedules": True, "methods": [r["method"] for r in rows], "out": out}
        for r in rows:
            r.update(n=100, pgd=r["autoattack"], reliable=True, unreliable_reasons=[], train_seconds=1.0,
                     epoch_seconds=0.5, examples_per_s=10.0, workarounds=[])
        return {"config": config, "rows": rows, "reports": {r["method"]: {"training": {"workarounds": []}}
                                                             for r in rows},
                "machine": {}, "n_train": 100, "n_eval": 100, "complete": True}

    a = run("a", [_row("generalist@0.4", 0.90, 0.60)])
    b = run("b", [_row("art_madry", 0.88, 0.58), _row("art_trades@1", 0.92, 0.50)])
    merged = merge_runs.merge([a, b])
    assert [r["method"] for r in merged["rows"]] == ["generalist@0.4", "art_madry", "art_trades@1"]
    assert merged["rows"][1]["dominated_by"] == ["generalist@0.4"]
    assert merged["fronts"]["art_madry"]["front_dominates"] and not merged["fronts"]["art_trades"]["front_dominates"]
    merge_runs.write_results(tmp_path, merged)
    assert "generalist@0.4" in (tmp_path / "results.md").read_text()
    with pytest.raises(SystemExit, match="more than one run"):
        merge_runs.merge([a, a])
    c = run("c", [_row("art_madry", 0.88, 0.58)])
    c["config"]["epochs"] = 3
    with pytest.raises(SystemExit, match="epochs"):
        merge_runs.merge([a, c])
