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
    # one epoch at the official schedule (lr x 0.01) leaves every model at 0 of 24: check the plumbing
    for row in results["rows"]:
        assert row["n"] == 24  # --n-eval
    for method, report in results["reports"].items():
        assert report["settings"]["pgd_steps"] == 3 and report["settings"]["aa_version"] == "apgd-ce"
        assert report["attacks"]["pgd"]["n_attacked"] == sum(report["per_example"]["clean"])
        row = next(r for r in results["rows"] if r["method"] == method)
        assert (row["clean"], row["worst_case"]) == (report["clean_acc"], report["robust_acc"])
    madry = next(r for r in results["rows"] if r["method"] == "art_madry")
    assert "epochwise_lr" in madry["workarounds"] and "own_validation" in madry["workarounds"]
    assert (out / "results.md").read_text().count("| art_trades |") == 1
    assert (out / "tradeoff.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_then_evaluate(tmp_path, capsys):
    from art_generalist.data import load_dataset
    from art_generalist.state import load_exported

    out = tmp_path / "run"
    assert main(["train", "--epochs", "2", "--n-train", "256", "--n-val", "32", "--max-iter", "2", "--batch-size",
                 "16", "--lr-schedule", "constant", "--out", str(out), "--quiet", "--threads", "1"]) == 0
    assert (out / "model.safetensors").exists() and (out / "checkpoints").is_dir()
    code = main(["evaluate", str(out / "model.safetensors"), "--n-eval", "100", "--attacks", "pgd",
                 "--pgd-steps", "3", "--out", str(tmp_path / "report.json"), "--quiet", "--threads", "1"])
    report = json.loads((tmp_path / "report.json").read_text())
    assert code == 0 and report["reliable"] and report["n"] == 100
    # trained (chance 0.1, measured 0.71) and attacked: PGD at eps 0.1 takes points (measured 0.71 -> 0.33)
    assert report["clean_acc"] > 0.4 and report["robust_acc"] < report["clean_acc"] - 0.1
    assert report["attacks"]["pgd"]["n_attacked"] == sum(report["per_example"]["clean"])
    # the exported file is the model evaluated: reloaded, it gets the same test points right
    data = load_dataset("digits", seed=0, n_test=100)
    right = load_exported(out / "model.safetensors").predict(data.x_test).argmax(1) == data.y_test
    assert right.tolist() == report["per_example"]["clean"]


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


def test_unknown_method_is_rejected(capsys):
    assert main(["benchmark", "--methods", "generalist,fgsm", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "Unknown method 'fgsm'" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(ValueError, match="Unknown method 'fgsm'"):
        main(["benchmark", "--methods", "generalist,fgsm", "--quiet", "--debug"])


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
    runs = results["runs"]
    for run in runs:
        assert run["best_lr"] in (0.01, 0.001) and run["reliable"]
    # the target PGD takes points: over the 12 runs, 0.825 robust vs 1.2 clean measured (15 of 480 points)
    assert sum(r["robust"] for r in runs) < sum(r["clean"] for r in runs) - 0.1
    for row in results["rows"]:  # each row is the mean of its seeds' runs, in %
        mine = [r for r in runs if (r["source"], r["mode"]) == (row["source"], row["mode"])]
        assert len(mine) == row["seeds"] == 2
        assert row["clean"] == pytest.approx(100 * sum(r["clean"] for r in mine) / 2)
        assert row["robust"] == pytest.approx(100 * sum(r["robust"] for r in mine) / 2)
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


def test_resume_of_a_finished_benchmark_keeps_every_result(tmp_path, capsys):
    """`benchmark --resume` on a finished run: exit 0, the same table and verdict, results.json untouched."""
    out = tmp_path / "bench"
    args = ["benchmark", "--methods", "generalist,art_madry", "--no-base-learners", "--epochs", "1", "--n-train",
            "64", "--n-val", "16", "--n-eval", "8", "--max-iter", "1", "--aa-version", "apgd-ce", "--pgd-steps", "1",
            "--batch-size", "64", "--out", str(out), "--quiet", "--threads", "1"]
    assert main(args) == 0
    first = capsys.readouterr().out
    before = (out / "results.json").read_bytes()
    assert main(args + ["--resume"]) == 0
    again = capsys.readouterr().out
    assert again.split("\n\n")[0] == first.split("\n\n")[0] and "front dominates" in first  # table and verdict
    assert "every method had finished in an earlier run; left as it was" in again
    assert (out / "results.json").read_bytes() == before
    results = json.loads(before)
    assert set(results["epoch_time_ratio_vs_art_madry"]) == {"generalist", "art_madry"}
    assert "art_madry" in results["fronts"]


@pytest.mark.parametrize("argv, flag", [
    (["train", "--n-val", "-5"], "--n-val"),
    (["train", "--eps-step", "0"], "--eps-step"),
    (["train", "--device", "bogus"], "--device"),
    (["train", "--device", "cuda:99"], "--device"),
    (["benchmark", "--lr", "nan"], "--lr"),
    (["benchmark", "--lr", "inf"], "--lr"),
    (["benchmark", "--eps", "-0.1"], "--eps"),
    (["benchmark", "--epochs", "0"], "--epochs"),
    (["benchmark", "--max-iter", "-1"], "--max-iter"),
    (["benchmark", "--batch-size", "0"], "--batch-size"),
    (["benchmark", "--n-train", "0"], "--n-train"),
    (["benchmark", "--n-eval", "0"], "--n-eval"),
    (["benchmark", "--pgd-steps", "0"], "--pgd-steps"),
    (["benchmark", "--art-lr-chunks", "0"], "--art-lr-chunks"),
    (["benchmark", "--aa-version", "fastest"], "--aa-version"),
    (["train", "--threads", "0"], "--threads"),
    (["train", "--seed", "-1"], "--seed"),
    (["train", "--checkpoint-every", "0"], "--checkpoint-every"),
    (["evaluate", "m.safetensors", "--pgd-steps", "0"], "--pgd-steps"),
    (["evaluate", "m.safetensors", "--n-eval", "-1"], "--n-eval"),
    (["evaluate", "m.safetensors", "--attacks", "pgd,pgdd"], "--attacks"),
    (["transfer", "--lr-grid", "0.01,nan"], "--lr-grid"),
    (["transfer", "--seeds", "0,-1"], "--seeds"),
    (["transfer", "--source-eps", "0,-0.1"], "--source-eps"),
    (["transfer", "--generalist-eps", "0"], "--generalist-eps"),
    (["transfer", "--target-eps", "0"], "--target-eps"),
    (["transfer", "--source-epochs", "0"], "--source-epochs"),
    (["transfer", "--modes", "full,partial"], "--modes"),
])
def test_bad_values_are_refused_at_parse_time_naming_the_flag(argv, flag, capsys):
    from art_generalist.cli import parser

    with pytest.raises(SystemExit) as exit_info:
        parser().parse_args(argv)  # what main() does first
    assert exit_info.value.code == 2
    assert f"argument {flag}:" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["benchmark"], ["train"], ["transfer"], ["evaluate", "m.safetensors"]])
def test_collective_timeout_reaches_the_process_group(argv, monkeypatch):
    from art_generalist.parallel import ranks

    seen = []

    def init(device, **kwargs):
        seen.append(kwargs)
        raise RuntimeError("stop here")
    monkeypatch.setattr(ranks, "init_from_env", init)
    for extra, expected in (([], None), (["--collective-timeout", "90"], 90.0)):
        with pytest.raises(RuntimeError, match="stop here"):
            main(argv + extra + ["--quiet"])
        assert seen.pop() == {"timeout_s": expected}
    with pytest.raises(SystemExit):
        main(argv + ["--collective-timeout", "0"])


def test_train_into_another_runs_folder_is_refused_unless_resume_or_overwrite(tmp_path, capsys):
    args = ["train", "--epochs", "1", "--n-train", "64", "--n-val", "0", "--max-iter", "1", "--out",
            str(tmp_path / "run"), "--quiet", "--threads", "1", "--method", "pgd_at"]
    assert main(args) == 0
    first = (tmp_path / "run" / "checkpoints" / "checkpoint-epoch00001.pt").read_bytes()
    assert main(args + ["--lr", "0.01"]) == 2
    assert "holds the checkpoints of another run" in capsys.readouterr().err
    assert (tmp_path / "run" / "checkpoints" / "checkpoint-epoch00001.pt").read_bytes() == first
    assert main(args + ["--lr", "0.01", "--resume"]) == 2
    assert "belongs to another run" in capsys.readouterr().err
    assert main(args + ["--lr", "0.01", "--overwrite"]) == 0
    assert (tmp_path / "run" / "checkpoints" / "checkpoint-epoch00001.pt").read_bytes() != first


def test_benchmark_resume_with_other_settings_is_one_line_not_a_traceback(tmp_path, capsys):
    args = ["benchmark", "--epochs", "1", "--n-train", "96", "--n-val", "32", "--n-eval", "16", "--max-iter", "1",
            "--aa-version", "apgd-ce", "--pgd-steps", "2", "--batch-size", "32", "--methods", "pgd_at",
            "--out", str(tmp_path / "b"), "--quiet", "--threads", "1", "--no-base-learners"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args + ["--resume", "--eps", "0.3"]) == 2
    assert "written with other settings (eps: results.json 0.1, now 0.3" in capsys.readouterr().err


def test_evaluate_defaults_to_the_data_set_of_the_export_and_caps_n_eval(tmp_path, capsys):
    """`train` then `evaluate <export>` without data flags: the export records digits (359 test
    points) and evaluate's default of 1,000 points is capped at the split, with a note."""
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--n-train", "64", "--n-val", "0", "--max-iter", "1",
                 "--out", str(out), "--quiet", "--threads", "1"]) == 0
    meta = json.loads((out / "model.json").read_text())
    assert meta["data"] == {"dataset": "digits", "root": None, "seed": 0, "n_train": 64, "n_val": 0,
                            "test_points": 359}
    capsys.readouterr()
    assert main(["evaluate", str(out / "model.safetensors"), "--attacks", "pgd", "--pgd-steps", "1",
                 "--checks", "none", "--out", str(tmp_path / "r.json"), "--quiet", "--threads", "1"]) == 0
    assert "digits's test split holds 359 points" in capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())["n"] == 359


@pytest.mark.slow
def test_train_then_evaluate_with_every_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train"]) == 0
    assert main(["evaluate", "runs/train/model.safetensors"]) == 0


@pytest.mark.parametrize("argv, says", [
    (["evaluate", "{tmp}/absent.safetensors"], "FileNotFoundError"),
    (["train", "--dataset", "mnist", "--data-root", "{tmp}/empty", "--epochs", "1"], "Pass --download to fetch it"),
    (["train", "--n-train", "5000", "--epochs", "1", "--out", "{tmp}/t"], "n_train=5200 is out of range"),
    (["benchmark", "--generalist-args", '{"ema_decay": 2}', "--epochs", "1", "--out", "{tmp}/b"], "ema_decay"),
    (["train", "--lr", "nan"], "--lr"),
])
def test_a_users_mistake_is_one_line_and_exit_2(argv, says, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv] + ["--quiet", "--threads", "1"]
    parse_error = False
    try:
        code = main(argv)
    except SystemExit as exc:  # refused when the arguments are parsed
        code, parse_error = exc.code, True
    err = capsys.readouterr().err.strip()
    assert code == 2 and says in err and len(err.splitlines()) == 1, err
    if not parse_error:  # --debug: the exception itself, for its traceback
        with pytest.raises((OSError, ValueError)):
            main(argv + ["--debug"])
