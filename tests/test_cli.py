"""The console script end to end at a tiny size."""
from __future__ import annotations

import json

import pytest

from art_generalist.cli import main


def test_benchmark_end_to_end_tiny(tmp_path, capsys):
    out = tmp_path / "bench"
    code = main(["benchmark", "--epochs", "1", "--n-train", "192", "--n-val", "64", "--n-eval", "24",
                 "--max-iter", "2", "--aa-version", "apgd-ce", "--pgd-steps", "3", "--batch-size", "64",
                 "--out", str(out), "--quiet", "--threads", "1"])
    assert code == 0
    printed = capsys.readouterr().out
    for method in ("generalist", "art_madry", "art_trades"):
        assert f"| {method} |" in printed
    results = json.loads((out / "results.json").read_text())
    assert {r["method"] for r in results["rows"]} >= {"generalist", "art_madry", "art_trades"}
    for row in results["rows"]:
        assert row["worst_case"] <= row["clean"]
    madry = next(r for r in results["rows"] if r["method"] == "art_madry")
    assert "epochwise_lr" in madry["workarounds"] and "own_validation" in madry["workarounds"]
    assert (out / "results.md").read_text().count("| art_trades |") == 1
    assert (out / "tradeoff.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_then_evaluate(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--n-train", "128", "--n-val", "32", "--max-iter", "2",
                 "--out", str(out), "--quiet", "--threads", "1"]) == 0
    assert (out / "model.safetensors").exists() and (out / "checkpoints").is_dir()
    code = main(["evaluate", str(out / "model.safetensors"), "--n-eval", "24", "--attacks", "pgd",
                 "--pgd-steps", "3", "--out", str(tmp_path / "report.json"), "--quiet", "--threads", "1"])
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["reliable"] and report["clean_acc"] >= report["robust_acc"]
    assert code == 0


def test_evaluate_exits_1_on_an_unreliable_report(tmp_path, monkeypatch):
    """The exit code follows the report's integrity verdict (scripts and CI gate on it)."""
    import art_generalist.evaluation as evaluation

    out = tmp_path / "run"
    assert main(["train", "--epochs", "2", "--n-train", "64", "--n-val", "0", "--max-iter", "1",
                 "--lr-schedule", "multistep", "--out", str(out), "--quiet", "--threads", "1"]) == 0
    history = json.loads((out / "history.json").read_text())
    assert [r["learners"]["natural"]["lr"] for r in history] == pytest.approx([0.05, 0.0005])  # past E/2, 3E/4
    real = evaluation.evaluate

    def unreliable(*args, **kwargs):
        report = real(*args, **kwargs)
        report.reliable, report.unreliable_reasons = False, ["fabricated: a failed check"]
        return report

    monkeypatch.setattr(evaluation, "evaluate", unreliable)
    assert main(["evaluate", str(out / "model.safetensors"), "--n-eval", "16", "--attacks", "pgd",
                 "--pgd-steps", "2", "--quiet", "--threads", "1"]) == 1


def test_generalist_args_are_checked_against_the_config():
    from art_generalist.cli import parser

    with pytest.raises(SystemExit):
        parser().parse_args(["benchmark", "--generalist-args", '{"ema_decy": 0.9}'])
    with pytest.raises(SystemExit):
        parser().parse_args(["benchmark", "--generalist-args", '{"ema_decay": 2.0}'])


def test_unknown_method_is_rejected():
    with pytest.raises(ValueError, match="Unknown method 'fgsm'"):
        main(["benchmark", "--methods", "generalist,fgsm", "--quiet"])


def test_generalist_args_are_parsed_as_a_json_object():
    from art_generalist.cli import parser

    args = parser().parse_args(["benchmark", "--generalist-args", '{"ema_decay": 0.9, "distribute_every": 0.125}'])
    assert args.generalist_args == {"ema_decay": 0.9, "distribute_every": 0.125}
    for bad in ("{not json", "[1, 2]"):
        with pytest.raises(SystemExit):
            parser().parse_args(["benchmark", "--generalist-args", bad])


def test_benchmark_paper_metrics_tiny(tmp_path, capsys):
    out = tmp_path / "bench"
    code = main(["benchmark", "--methods", "art_madry,flying_bird", "--paper-metrics", "--epochs", "1",
                 "--n-train", "128", "--n-val", "32", "--n-eval", "16", "--max-iter", "2", "--aa-version",
                 "apgd-ce", "--pgd-steps", "2", "--batch-size", "64", "--out", str(out), "--quiet", "--threads", "1"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| method | density | RA best |" in printed and "| flying_bird | 0.200 |" in printed
    reports = json.loads((out / "results.json").read_text())["reports"]
    art, sparse = reports["art_madry"]["paper"], reports["flying_bird"]["paper"]
    assert art["flops"]["training"] > sparse["flops"]["training"] > 0
    assert (out / "sparse.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_transfer_reproduction_end_to_end_tiny(tmp_path, capsys, monkeypatch):
    """`art-generalist transfer`: sources at two eps plus a Generalist source, both modes, two
    seeds; table, figure and per-run log; a rerun finds every source and run and trains nothing."""
    out = tmp_path / "transfer"
    args = ["transfer", "--source-dataset", "digits", "--target-dataset", "digits", "--model", "digits_net",
            "--source-eps", "0,0.1", "--generalist-eps", "0.1", "--source-epochs", "1", "--source-n-train", "256",
            "--max-iter", "2", "--target-n-train", "192", "--target-epochs", "1", "--seeds", "0,1", "--n-eval", "40",
            "--pgd-steps", "3", "--quiet", "--threads", "1", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert printed.count("| fixed-feature |") == 3 and printed.count("| full |") == 3
    results = json.loads((out / "results.json").read_text())
    assert len(results["runs"]) == 3 * 2 * 2
    assert {(r["method"], r["source_eps"]) for r in results["rows"]} == {
        ("standard", 0.0), ("pgd_at", 0.1), ("generalist", 0.1)}
    for run in results["runs"]:
        assert run["robust"] <= run["clean"] and run["best_lr"] in (0.01, 0.001) and run["reliable"]
    assert sorted(p.name for p in (out / "sources").glob("*.safetensors")) == [
        "generalist_eps0.1.safetensors", "pgd_at_eps0.1.safetensors", "standard_eps0.safetensors"]
    assert (out / "transfer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((out / "runs.jsonl").read_text().splitlines()) == 12

    import art_generalist.transfer.experiment as experiment
    monkeypatch.setattr(experiment, "transfer_once", lambda *a, **k: pytest.fail("a finished run was redone"))
    assert main(args) == 0
    assert json.loads((out / "results.json").read_text())["rows"] == results["rows"]


def test_sparse_args_flag_parses_a_json_object():
    from art_generalist.cli import parser

    args = parser().parse_args(["benchmark", "--sparse-args", '{"flying_bird_plus": {"update_threshold": 0.75}}'])
    assert args.sparse_args == {"flying_bird_plus": {"update_threshold": 0.75}}
    for bad in ("[0.75]", "{not json"):
        with pytest.raises(SystemExit):
            parser().parse_args(["benchmark", "--sparse-args", bad])
