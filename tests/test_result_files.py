"""Result files survive a kill or a full disk mid-write, a damaged one is named, and an export's
metadata is size-checked before it is parsed ("nothing lost, nothing silent")."""
from __future__ import annotations

import contextlib
import json
import resource
import signal
from argparse import Namespace
from pathlib import Path

import pytest

from art_generalist.benchmark.run import BenchmarkConfig, run_benchmark, write_results
from tests.conftest import make_classifier, tiny_net

TINY = dict(epochs=1, n_train=64, n_val=16, n_eval=8, max_iter=1, aa_version="apgd-ce", pgd_steps=1, batch_size=64,
            methods=("art_madry",), verbose=False, base_learners=False)


@contextlib.contextmanager
def full_disk(limit: int):
    """Files of this process cannot grow past ``limit`` bytes (writes fail with EFBIG), as on a full disk."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def test_a_full_disk_during_the_rewrite_leaves_the_previous_results_whole(tmp_path):
    results = run_benchmark(BenchmarkConfig(**TINY, out=str(tmp_path)))
    before = (tmp_path / "results.json").read_text(encoding="utf-8")
    bigger = {**results, "padding": "x" * 4 * len(before)}
    with full_disk(len(before)), pytest.raises(OSError) as failed:
        write_results(tmp_path, bigger)
    assert (tmp_path / "results.json").read_text(encoding="utf-8") == before  # whole, and the old one
    assert "results.json" in str(failed.value)  # the message names the file
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_damaged_results_json_is_named_on_resume(tmp_path):
    (tmp_path / "results.json").write_text('{"config": {"dataset": "dig', encoding="utf-8")  # cut by a kill
    with pytest.raises(ValueError, match=r"results\.json is not valid JSON"):
        run_benchmark(BenchmarkConfig(**TINY, out=str(tmp_path), resume=True))


def test_a_damaged_evaluation_report_is_named(tmp_path):
    from art_generalist.evaluation import EvaluationReport

    path = tmp_path / "report.json"
    report = EvaluationReport(model_name="m", n=1, eps=0.1, eps_unit=0.1, norm="Linf", seed=0, clean_acc=1.0,
                              robust_acc=0.5)
    report.to_json(path)
    assert EvaluationReport.from_json(path).robust_acc == 0.5
    path.write_text(path.read_text()[:40], encoding="utf-8")
    with pytest.raises(ValueError, match=r"report\.json is not valid JSON"):
        EvaluationReport.from_json(path)


def _transfer_args(out: Path, seeds: str) -> Namespace:
    from art_generalist.cli import parser

    return parser().parse_args(["transfer", "--source-dataset", "digits", "--target-dataset", "digits",
                                "--source-eps", "0", "--generalist-eps", "", "--modes", "full", "--seeds", seeds,
                                "--source-n-train", "64", "--target-n-train", "64", "--n-eval", "8", "--quiet",
                                "--out", str(out)])


def test_transfer_log_drops_a_torn_last_line_and_redoes_that_run(tmp_path, monkeypatch, caplog):
    """A kill during an append leaves half a line in runs.jsonl: the rerun warns, drops it and
    redoes that run; nothing before it is lost. Stale temporaries of killed writes are removed."""
    import art_generalist.transfer.experiment as experiment

    done = []

    def once(source, mode, seed, *args):
        done.append(seed)
        return {"source": source.stem, "mode": mode, "seed": seed, "clean": 0.5, "robust": 0.25, "reliable": True,
                "best_lr": 0.01, "val_scores": {}, "train_seconds": 0.0}
    monkeypatch.setattr(experiment, "train_source", lambda method, eps, args, data, out: out / f"{method}_eps0.st")
    monkeypatch.setattr(experiment, "transfer_once", once)
    out = tmp_path / "transfer"
    experiment.run_transfer(_transfer_args(out, "0,1"))
    log = out / "runs.jsonl"
    whole = log.read_text(encoding="utf-8")
    log.write_text(whole + '{"source": "standard_eps0", "mode": "full", "se', encoding="utf-8")
    (out / ".results.json.abc123.tmp").write_text("{", encoding="utf-8")
    rows = experiment.run_transfer(_transfer_args(out, "0,1,2"))
    assert done == [0, 1, 2] and rows[0]["seeds"] == 3
    assert [json.loads(line)["seed"] for line in log.read_text(encoding="utf-8").splitlines()] == [0, 1, 2]
    assert "cut short" in caplog.text
    assert not list(out.glob(".*.tmp"))
    log.write_text('{"seed": 0}\nnot json\n' + whole, encoding="utf-8")  # damage before the end is refused
    with pytest.raises(ValueError, match=r"runs\.jsonl, line 2"):
        experiment.run_transfer(_transfer_args(out, "0,1,2"))


def _padded_export(tmp_path: Path, padding: int) -> Path:
    """A real export whose metadata carries ``padding`` extra bytes."""
    from safetensors.torch import load_file, save_file

    from art_generalist import SingleLearnerTrainer

    path = tmp_path / "m.safetensors"
    SingleLearnerTrainer(make_classifier(), eps=0.1, eps_step=0.05, max_iter=1, verbose=False).export(path)
    meta = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    meta["padding"] = "x" * padding
    save_file(load_file(str(path)), str(path), metadata={"art_generalist": json.dumps(meta)})
    return path


@pytest.mark.parametrize("padding, cap", [(2 * 2**20, "metadata is"), (9 * 2**20, "header claims")])
def test_oversized_export_metadata_is_refused_before_parsing(tmp_path, padding, cap):
    from art_generalist.state.export import load_exported

    path = _padded_export(tmp_path, padding)
    with pytest.raises(ValueError, match=rf"m\.safetensors: its (safetensors )?{cap} .* over the cap"):
        load_exported(path, model=tiny_net())


def test_export_within_the_caps_still_loads(tmp_path):
    from art_generalist.state.export import load_exported

    assert load_exported(_padded_export(tmp_path, 1000), model=tiny_net()).nb_classes == 10
