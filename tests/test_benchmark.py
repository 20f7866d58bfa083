"""The equal-budget benchmark's pieces: shared schedules, ART's chunked epochs, partial results,
the epoch-time ratio, and the trainers' channels_last default."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from art_generalist import GeneralistTrainer, SingleLearnerTrainer
from art_generalist.benchmark import run as bench
from art_generalist.benchmark.art_runner import ARTTrainerRun
from art_generalist.benchmark.run import BenchmarkConfig, format_table, run_benchmark
from art_generalist.train.options import RuntimeOptions
from tests.conftest import FAST, make_classifier, tiny_net


def test_channels_last_auto_is_on_for_images_only():
    assert RuntimeOptions(channels_last="auto").use_channels_last((1, 8, 8)) is True
    assert RuntimeOptions(channels_last="auto").use_channels_last((20,)) is False
    assert RuntimeOptions(channels_last=False).use_channels_last((1, 8, 8)) is False
    with pytest.raises(ValueError, match="channels_last"):
        RuntimeOptions(channels_last="yes")
    trainer = GeneralistTrainer(make_classifier(), **FAST)
    assert trainer.channels_last and trainer.settings()["channels_last"] is True
    assert trainer.global_space.channels_last and all(lrn.space.channels_last for lrn in trainer.learners)
    assert not GeneralistTrainer(make_classifier(), channels_last=False, **FAST).global_space.channels_last


def test_channels_last_changes_layout_not_arithmetic(digits):
    """Same seed, same data: the two layouts give the same model up to float rounding."""
    x, y = digits.x_train[:128], digits.y_train[:128]
    finals = []
    for layout in (True, False):
        torch.manual_seed(0)
        trainer = SingleLearnerTrainer(make_classifier(), channels_last=layout, **FAST)
        trainer.fit(x, y, nb_epochs=1, batch_size=64)
        finals.append(trainer.get_classifier().predict(digits.x_test[:64]))
    np.testing.assert_allclose(finals[0], finals[1], rtol=1e-3, atol=1e-4)


def test_per_iteration_schedule_of_the_single_learner_trainer(digits):
    x, y = digits.x_train[:256], digits.y_train[:256]
    lrs = {}
    for per_iteration in (False, True):
        trainer = SingleLearnerTrainer(make_classifier(lr=0.1), per_iteration_schedules=per_iteration,
                                       lr_schedule="official", **FAST)
        history = trainer.fit(x, y, nb_epochs=2, batch_size=64)
        lrs[per_iteration] = [r["learners"]["pgd"]["lr"] for r in history]
        assert trainer.settings()["per_iteration_schedules"] is per_iteration
    # per epoch the schedule is read at epochs 1 and 2; per iteration the last batch of each
    # epoch reads it at progress 1.0 and 2.0, so the epochs end on the same values
    expected = [0.1 * trainer.learner.schedule(e, 2) for e in (1, 2)]
    np.testing.assert_allclose(lrs[False], expected)
    np.testing.assert_allclose(lrs[True], expected)
    assert expected[0] > expected[1]


def test_per_iteration_lr_moves_within_the_epoch(digits, monkeypatch):
    seen = []
    trainer = SingleLearnerTrainer(make_classifier(lr=0.1), per_iteration_schedules=True, lr_schedule="official",
                                   **FAST)
    original = trainer.learner.step

    def step(u, y):
        seen.append(trainer.learner.optimizer.param_groups[0]["lr"])
        return original(u, y)
    monkeypatch.setattr(trainer.learner, "step", step)
    trainer.fit(digits.x_train[:256], digits.y_train[:256], nb_epochs=1, batch_size=64)
    expected = [0.1 * trainer.learner.schedule((i + 1) / 4, 1) for i in range(4)]
    np.testing.assert_allclose(seen, expected)
    assert len(set(seen)) == 4


def test_art_chunks_cover_each_example_once_in_whole_batches(classifier):
    run = ARTTrainerRun(classifier, "madry", eps=0.1, eps_step=0.025, max_iter=2, lr_updates_per_epoch=4, seed=3)
    assert "chunked_lr" in run.workarounds
    chunks = run._chunks(1000, 64, epoch=2)          # 16 batches, the last one partial
    assert len(chunks) == 4
    idx = np.concatenate([c for c, _ in chunks])
    assert sorted(idx.tolist()) == list(range(1000))
    assert all(len(c) % 64 == 0 for c, _ in chunks[:-1])
    times = [t for _, t in chunks]
    assert times == sorted(times) and 1.0 < times[0] < times[-1] < 2.0
    single = ARTTrainerRun(classifier, "madry", eps=0.1, eps_step=0.025, max_iter=2)
    assert single._chunks(1000, 64, epoch=2) == [(None, 2.0)] and "chunked_lr" not in single.workarounds
    with pytest.raises(ValueError, match="lr_updates_per_epoch"):
        ARTTrainerRun(classifier, "madry", eps=0.1, eps_step=0.025, max_iter=2, lr_updates_per_epoch=0)


def test_art_chunked_epoch_follows_the_schedule(digits):
    from art_generalist.models import get_model

    classifier = make_classifier(get_model("digits_net", 1, 10, 8))   # ART's TRADES needs a non-Sequential model
    run = ARTTrainerRun(classifier, "trades", eps=0.1, eps_step=0.025, max_iter=2, lr_updates_per_epoch=3,
                        val_max_iter=0)
    lrs = []
    original = run.trainer.fit

    def fit(x, y, **kwargs):
        lrs.append((len(x), run.classifier.optimizer.param_groups[0]["lr"]))
        return original(x, y, **kwargs)
    run.trainer.fit = fit
    history = run.fit(digits.x_train[:384], digits.y_train[:384], nb_epochs=1, batch_size=64)
    assert [n for n, _ in lrs] == [128, 128, 128]
    base = classifier.optimizer.param_groups[0]["lr"]
    expected = [base * run.lr_schedule(t, 1) for t in (1.5 / 6, 3.5 / 6, 5.5 / 6)]
    np.testing.assert_allclose([lr for _, lr in lrs], expected)
    assert history[0]["examples"] == 384


def test_epoch_ratio_and_table():
    rows = [{"method": "generalist", "epoch_seconds": 6.0}, {"method": "art_madry", "epoch_seconds": 10.0},
            {"method": "generalist:teacher:robust", "epoch_seconds": None}]
    assert bench._epoch_ratios(rows) == {"generalist": 0.6, "art_madry": 1.0}
    assert bench._epoch_ratios(rows[:1]) == {}
    full = [dict(r, clean=0.9, pgd=0.5, autoattack=0.4, worst_case=0.4, reliable=True, unreliable_reasons=[],
                 train_seconds=None if r["epoch_seconds"] is None else 3 * r["epoch_seconds"],
                 examples_per_s=None, n=100, dominated_by=["art_trades@1"] if r["method"] == "art_madry" else [])
            for r in rows]
    table = format_table(full)
    assert "| generalist | 90.00 [82.6, 94.5] | 50.00 | 40.00 [30.9, 49.8] | 40.00 | — | 18.0 | 6.0 | 0.60 |" in table
    assert "| art_madry | 90.00 [82.6, 94.5] | 50.00 | 40.00 [30.9, 49.8] | 40.00 | art_trades@1 | 30.0 |" in table
    assert "| generalist:teacher:robust | 90.00 [82.6, 94.5] | 50.00 | 40.00 [30.9, 49.8] | 40.00 | — | — | — | — |" \
        in table


def test_results_are_written_after_each_method(tmp_path, monkeypatch):
    """A run stopped part-way keeps what it finished, marked incomplete."""
    real = bench._train

    def train(method, *args):
        if method == "art_madry":
            raise RuntimeError("stopped")
        return real(method, *args)
    monkeypatch.setattr(bench, "_train", train)
    cfg = BenchmarkConfig(epochs=1, n_train=128, n_val=32, n_eval=16, max_iter=2, aa_version="apgd-ce",
                          pgd_steps=2, methods=("generalist", "art_madry"), out=str(tmp_path), verbose=False,
                          base_learners=False)
    with pytest.raises(RuntimeError, match="stopped"):
        run_benchmark(cfg)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["complete"] is False and [r["method"] for r in results["rows"]] == ["generalist"]
    assert "Partial results" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "tradeoff.png").exists()


def test_resume_keeps_finished_methods_and_continues_the_rest(tmp_path, monkeypatch):
    """A stopped run rerun with resume=True keeps what it finished and trains only the rest."""
    real = bench._train
    trained = []

    def train(method, *args):
        trained.append(method)
        if method == "art_madry" and len(trained) == 2:
            raise RuntimeError("stopped")
        return real(method, *args)
    monkeypatch.setattr(bench, "_train", train)
    cfg = dict(epochs=1, n_train=128, n_val=32, n_eval=16, max_iter=2, aa_version="apgd-ce", pgd_steps=2,
               methods=("generalist@0.4", "art_madry"), out=str(tmp_path), verbose=False, base_learners=False)
    with pytest.raises(RuntimeError, match="stopped"):
        run_benchmark(BenchmarkConfig(**cfg))
    first = json.loads((tmp_path / "results.json").read_text())["reports"]["generalist@0.4"]
    results = run_benchmark(BenchmarkConfig(**cfg, resume=True))
    assert trained == ["generalist@0.4", "art_madry", "art_madry"] and results["complete"] is True
    assert json.loads(json.dumps(results["reports"]["generalist@0.4"], default=str)) == first
    with pytest.raises(ValueError, match="other settings"):
        run_benchmark(BenchmarkConfig(**{**cfg, "epochs": 2}, resume=True))


def test_art_runner_resume_matches_an_uninterrupted_run(digits, tmp_path):
    x, y = digits.x_train[:192], digits.y_train[:192]
    runs = {}
    for name, stops in (("straight", [None]), ("resumed", [1, None])):
        for i, stop in enumerate(stops):
            torch.manual_seed(0)
            np.random.seed(0)
            run = ARTTrainerRun(make_classifier(), "madry", eps=0.1, eps_step=0.05, max_iter=2, val_max_iter=0,
                                lr_updates_per_epoch=2, seed=0)
            if i and name == "resumed":  # a new process would start from fresh RNG states
                torch.manual_seed(123)
                np.random.seed(123)
            run.fit(x, y, nb_epochs=3, batch_size=64, checkpoint_dir=tmp_path / name, resume=i > 0, stop_after=stop)
        runs[name] = run
    a, b = (runs[k].classifier.model.state_dict() for k in ("straight", "resumed"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["epoch"] for r in runs["resumed"].history] == [1, 2, 3]


def test_benchmark_shares_the_per_iteration_schedule(tmp_path):
    cfg = BenchmarkConfig(epochs=1, n_train=128, n_val=32, n_eval=16, max_iter=2, aa_version="apgd-ce",
                          pgd_steps=2, methods=("generalist", "pgd_at", "art_madry"), out=str(tmp_path),
                          verbose=False, base_learners=False, per_iteration_schedules=True, art_lr_chunks=2)
    results = run_benchmark(cfg)
    assert results["complete"] is True and len(results["rows"]) == 3
    training = {m: r["training"] for m, r in results["reports"].items()}
    assert "chunked_lr" in [w["id"] for w in training["art_madry"]["workarounds"]]
    # the last iteration of the one-epoch budget reads the schedule at its end: lr × 0.01
    for method, info in training.items():
        lr = info["history"][-1]["lr"] if method == "art_madry" else next(
            iter(info["history"][-1]["learners"].values()))["lr"]
        assert lr < cfg.lr * 0.1, (method, lr)
    assert set(results["epoch_time_ratio_vs_art_madry"]) == {"generalist", "pgd_at", "art_madry"}


def test_benchmark_shares_the_multistep_schedule(tmp_path):
    """--lr-schedule multistep reaches every kind of trainer: lr, lr, lr/10, lr/100 over 4 epochs."""
    cfg = BenchmarkConfig(epochs=4, n_train=64, n_val=0, n_eval=8, max_iter=1, aa_version="apgd-ce", pgd_steps=1,
                          methods=("generalist", "pgd_at", "art_madry"), out=str(tmp_path), verbose=False,
                          base_learners=False, lr_schedule="multistep")
    results = run_benchmark(cfg)
    for method, report in results["reports"].items():
        history = report["training"]["history"]
        lrs = [r["lr"] if method == "art_madry" else next(iter(r["learners"].values()))["lr"] for r in history]
        assert lrs == pytest.approx([cfg.lr, cfg.lr, cfg.lr * 0.1, cfg.lr * 0.01]), method
    assert "`multistep`" in (tmp_path / "results.md").read_text(encoding="utf-8")
    with pytest.raises(ValueError, match="multistep"):
        BenchmarkConfig(lr_schedule="step")


def test_paired_comparison():
    from art_generalist.benchmark import paired

    assert paired.mcnemar_exact(0, 0) == 1.0
    assert abs(paired.mcnemar_exact(9, 6) - 0.6072387695) < 1e-9      # 2 * P(Bin(15, 1/2) <= 6)
    assert paired.mcnemar_exact(0, 10) == 2 / 2 ** 10
    c = paired.compare([True, True, False, False], [True, False, True, True])
    assert (c["only_a"], c["only_b"], c["diff_points"]) == (1, 2, -25.0)
    with pytest.raises(ValueError, match="different numbers"):
        paired.compare([True], [True, False])
    report = {"settings": {"eps": 0.1}, "n": 2, "seed": 0, "per_example": {"clean": [1, 1], "robust": [1, 0]}}
    other = {**report, "per_example": {"clean": [0, 1], "robust": [0, 0]}}
    both = paired.compare_reports(report, other)
    assert (both["clean"]["diff_points"], both["robust"]["only_a"]) == (50.0, 1)
    with pytest.raises(ValueError, match="not evaluated the same way"):
        paired.compare_reports(report, {**other, "seed": 1})


TINY = dict(epochs=2, n_train=64, n_val=16, n_eval=8, max_iter=1, aa_version="apgd-ce", pgd_steps=1, batch_size=32,
            methods=("art_madry",), verbose=False, base_learners=False)


def test_resume_refuses_changed_settings_even_before_the_first_method_finished(tmp_path, monkeypatch):
    """A run stopped inside its first method has no finished method yet: its settings are on disk
    all the same, a resume with another eps is refused listing what differs, and the stored
    config is left true."""
    real = ARTTrainerRun.fit

    def stopped(self, *args, **kwargs):
        real(self, *args, **{**kwargs, "stop_after": 1})
        raise RuntimeError("killed")
    monkeypatch.setattr(ARTTrainerRun, "fit", stopped)
    with pytest.raises(RuntimeError, match="killed"):
        run_benchmark(BenchmarkConfig(**TINY, eps=0.1, out=str(tmp_path)))
    monkeypatch.setattr(ARTTrainerRun, "fit", real)
    with pytest.raises(ValueError, match=r"eps: results\.json 0\.1, now 0\.3.*lr: results\.json 0\.05, now 0\.01"):
        run_benchmark(BenchmarkConfig(**TINY, eps=0.3, eps_step=0.025, lr=0.01, out=str(tmp_path), resume=True))
    assert json.loads((tmp_path / "results.json").read_text())["config"]["eps"] == 0.1
    with pytest.raises(FileExistsError, match="resume"):  # without resume nothing is overwritten
        run_benchmark(BenchmarkConfig(**TINY, eps=0.3, out=str(tmp_path)))
    # runtime fields may differ: where the data is read from, the device, progress output
    results = run_benchmark(BenchmarkConfig(**{**TINY, "verbose": True}, eps=0.1, out=str(tmp_path), resume=True,
                                            data_root=str(tmp_path / "elsewhere")))
    assert results["complete"] and [r["epoch"] for r in results["reports"]["art_madry"]["training"]["history"]] \
        == [1, 2]


def test_art_runner_resume_refuses_changed_settings(digits, tmp_path):
    x, y = digits.x_train[:64], digits.y_train[:64]

    def run(**changes):
        kwargs = {"eps": 0.1, "eps_step": 0.05, "max_iter": 1, "val_max_iter": 0, **changes}
        batch_size = kwargs.pop("batch_size", 32)
        return ARTTrainerRun(make_classifier(), "madry", **kwargs).fit(
            x, y, nb_epochs=2, batch_size=batch_size, checkpoint_dir=tmp_path, resume=True, stop_after=1)
    run()
    for changes, message in (({"eps": 0.3}, "eps: checkpoint 0.1, now 0.3"), ({"batch_size": 16}, "batch_size"),
                             ({"max_iter": 2}, "max_iter: checkpoint 1, now 2")):
        with pytest.raises(ValueError, match=message):
            run(**changes)
    flipped = y.copy()
    flipped[0] = (flipped[0] + 1) % 10
    for clf, data, message in ((make_classifier(model=tiny_net(0, bn=True)), (x, y), "model: line"),
                               (make_classifier(lr=0.5), (x, y), "optimizer.*lr"),
                               (make_classifier(), (x[:60], y[:60]), "examples: checkpoint 64, now 60"),
                               (make_classifier(), (x, flipped), "data: checkpoint")):
        with pytest.raises(ValueError, match=message):
            ARTTrainerRun(clf, "madry", eps=0.1, eps_step=0.05, max_iter=1, val_max_iter=0).fit(
                *data, nb_epochs=2, batch_size=32, checkpoint_dir=tmp_path, resume=True, stop_after=1)
    assert [r["epoch"] for r in run()] == [1, 2]  # the same settings resume


def test_resume_of_a_finished_run_restores_missing_summaries_without_training(tmp_path, monkeypatch):
    """A finished results.json that lost its front verdict and epoch-time ratios (written by the
    old resume) gets them back on resume; nothing is trained again."""
    cfg = dict(TINY, epochs=1, out=str(tmp_path))
    first = json.loads(json.dumps(run_benchmark(BenchmarkConfig(**cfg)), default=str))
    broken = {k: v for k, v in first.items() if k not in ("fronts", "epoch_time_ratio_vs_art_madry")}
    (tmp_path / "results.json").write_text(json.dumps(broken), encoding="utf-8")
    monkeypatch.setattr(bench, "_train", lambda *a: pytest.fail("a finished method was trained again"))
    results = run_benchmark(BenchmarkConfig(**cfg, resume=True))
    stored = json.loads((tmp_path / "results.json").read_text())
    for key in ("fronts", "epoch_time_ratio_vs_art_madry", "rows", "reports"):
        assert stored[key] == first[key] and key in results, key
    assert stored["complete"] is True


@pytest.mark.parametrize("field, value", [("n_val", -5), ("eps_step", 0.0), ("lr", float("nan")),
                                          ("batch_size", 0), ("eps", float("inf")), ("pgd_steps", 0)])
def test_benchmark_config_refuses_bad_numbers(field, value):
    with pytest.raises(ValueError, match=f"`{field}`"):
        BenchmarkConfig(**{field: value})


def test_arts_awp_trainer_runs_as_the_other_art_baselines(digits, tmp_path, monkeypatch):
    """ART's AWP (PGD mode): its weight perturbation runs at every batch from the first epoch (our
    per-epoch fit calls would otherwise never leave ART's warm-up), the model trains, and resume
    compares its gamma."""
    from art.defences.trainer import AdversarialTrainerAWPPyTorch

    calls = []
    real = AdversarialTrainerAWPPyTorch._weight_perturbation

    def counted(self, *args, **kwargs):
        calls.append(1)
        return real(self, *args, **kwargs)
    monkeypatch.setattr(AdversarialTrainerAWPPyTorch, "_weight_perturbation", counted)
    clf = make_classifier(tiny_net(0))
    before = [p.detach().clone() for p in clf.model.parameters()]
    run = ARTTrainerRun(clf, "awp", eps=0.1, eps_step=0.05, max_iter=1, val_max_iter=0)
    history = run.fit(digits.x_train[:64], digits.y_train[:64], nb_epochs=2, batch_size=32,
                      checkpoint_dir=tmp_path, stop_after=1)
    assert len(history) == 1 and len(calls) == 2 and "awp_setup" in run.workarounds
    assert any(not torch.equal(a, b) for a, b in zip(before, run.classifier.model.parameters()))
    with pytest.raises(ValueError, match="awp_gamma: checkpoint 0.01, now 0.02"):
        ARTTrainerRun(make_classifier(tiny_net(0)), "awp", eps=0.1, eps_step=0.05, max_iter=1, val_max_iter=0,
                      awp_gamma=0.02).fit(digits.x_train[:64], digits.y_train[:64], nb_epochs=2, batch_size=32,
                                          checkpoint_dir=tmp_path, resume=True)
