"""Sparse methods in the benchmark and the paper's metrics: names and knobs, best-vs-final
tracking without restoring, the generalization gap on the trained model, density and FLOPs."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from art_generalist import SingleLearnerTrainer
from art_generalist.benchmark import fronts, sparse_metrics
from art_generalist.benchmark import run as bench
from art_generalist.benchmark.art_runner import ARTTrainerRun
from art_generalist.benchmark.run import METHODS, BenchmarkConfig, run_benchmark
from art_generalist.sparse import FlyingBird, FlyingBirdPlus, RobustBird
from art_generalist.train.trainer import TensorTrainer
from art_generalist.train.validation import TrackBest
from tests.conftest import make_classifier, snapshots_plugin

SPARSE = ("pgd_at", "flying_bird@0.2", "flying_bird_plus@0.2", "robust_bird@0.2", "generalist+flying_bird@0.2")


def test_sparse_method_names_parse_and_refuse_bad_densities():
    assert fronts.split_method("flying_bird@0.2", METHODS) == ("flying_bird", 0.2)
    assert fronts.split_method("generalist+flying_bird@1", METHODS) == ("generalist+flying_bird", 1.0)
    assert fronts.split_method("robust_bird", METHODS) == ("robust_bird", None)
    for bad in ("flying_bird@0", "flying_bird_plus@1.5", "robust_bird@-0.2", "flying_bird@nan",
                "generalist+flying_bird@inf"):
        with pytest.raises(ValueError, match=r"density .* \(0, 1\]"):
            fronts.split_method(bad, METHODS)
    cfg = BenchmarkConfig(methods=("robust_bird", "flying_bird_plus@0.5"))
    options = sparse_metrics.trainer_options("robust_bird", None, cfg)
    assert isinstance(options["sparsity"], RobustBird) and options["sparsity"].density == 0.2
    assert "plugins" not in options and sparse_metrics.trainer_options("pgd_at", None, cfg) == {}
    assert type(sparse_metrics.trainer_options("generalist+flying_bird", 0.3, cfg)["sparsity"]) is FlyingBird
    assert isinstance(sparse_metrics.trainer_options("flying_bird_plus", 0.5, cfg)["sparsity"], FlyingBirdPlus)
    with pytest.raises(ValueError, match="flying_bird_plus needs validation data"):
        BenchmarkConfig(methods=("flying_bird_plus@0.2",), n_val=0)
    with pytest.raises(ValueError, match="paper_metrics.*n_val"):
        BenchmarkConfig(methods=("pgd_at",), n_val=0, paper_metrics=True)
    BenchmarkConfig(methods=("flying_bird@0.2",), n_val=0)  # Flying Bird itself needs no validation


def test_sparse_args_reach_their_family_only_and_bad_ones_are_refused():
    cfg = BenchmarkConfig(methods=("flying_bird_plus@0.2", "flying_bird@0.2", "robust_bird"), sparse_init="erk",
                          sparse_args={"flying_bird_plus": {"update_threshold": 0.75, "epoch_range": 6},
                                       "robust_bird": {"threshold": 0.05}})
    fbp = sparse_metrics.trainer_options("flying_bird_plus", 0.2, cfg)["sparsity"]
    assert (fbp.update_threshold, fbp.epoch_range, fbp.init) == (0.75, 6, "erk")  # the run's settings kept
    assert sparse_metrics.trainer_options("robust_bird", None, cfg)["sparsity"].threshold == 0.05
    assert not hasattr(sparse_metrics.trainer_options("flying_bird", 0.2, cfg)["sparsity"], "update_threshold")
    for bad, match in (({"flying_bird": {"update_threshold": 0.75}}, "sparse_args\\['flying_bird'\\]"),
                       ({"mart": {}}, "sparse family"), ({"flying_bird_plus": 0.75}, "sparse family"),
                       ({"flying_bird_plus": {"update_threshold": 2}}, "update_threshold")):
        with pytest.raises(ValueError, match=match):
            BenchmarkConfig(methods=("flying_bird_plus@0.2",), sparse_args=bad)


def _scripted(scores):
    """A ``_validate`` whose PGD accuracies follow ``scores`` (one per epoch, per trainer)."""
    def validate(self, u, y):
        self._scripted = getattr(self, "_scripted", iter(scores))
        pgd = next(self._scripted)
        return {"val_clean_acc": 0.5, "val_pgd_acc": pgd, "val_pgd_loss": 2.0 - pgd, "val_seconds": 0.0}
    return validate


def test_track_best_keeps_the_best_epoch_without_restoring_it(digits, monkeypatch):
    monkeypatch.setattr(TensorTrainer, "_validate", _scripted([0.2, 0.9, 0.5]))
    track, snapshots = TrackBest(), snapshots_plugin()
    trainer = SingleLearnerTrainer(make_classifier(), plugins=[track, snapshots], eps=0.1, eps_step=0.025,
                                   max_iter=2, verbose=False)
    x, y = digits.x_train[:256], digits.y_train[:256]
    history = trainer.fit(x, y, validation_data=(x[:32], y[:32]), nb_epochs=3, batch_size=64)
    assert [bool(r.get("best_tracked")) for r in history] == [True, True, False]
    assert track.epoch == 2 and track.best.score == 0.9
    final = trainer.get_classifier().model.state_dict()
    assert all(torch.equal(track.state[k], snapshots.states[1][k]) for k in final)
    assert all(torch.equal(final[k], snapshots.states[2][k]) for k in final)  # not restored
    assert not all(torch.equal(track.state[k], final[k]) for k in final)
    again = TrackBest()
    again.load_state_dict(track.state_dict())  # joins checkpoints: a resumed run keeps the best
    assert again.epoch == 2 and again.best.score == 0.9
    with pytest.raises(ValueError, match="val_max_iter"):
        TrackBest().offer({"epoch": 1, "val_pgd_acc": None}, trainer.get_classifier().model)


def test_art_runner_tracks_the_best_epoch(digits):
    track = TrackBest()
    run = ARTTrainerRun(make_classifier(), "madry", eps=0.1, eps_step=0.05, max_iter=2, val_max_iter=2,
                        track_best=track)
    x, y = digits.x_train[:128], digits.y_train[:128]
    run.fit(x, y, nb_epochs=2, batch_size=64, validation_data=(x[:32], y[:32]))
    assert track.epoch in (1, 2) and track.state is not None


def test_paper_metrics_of_a_tiny_sparse_benchmark(tmp_path, monkeypatch):
    # the best validation PGD accuracy is at epoch 1 of 3 for every method: best != final
    monkeypatch.setattr(TensorTrainer, "_validate", _scripted([0.9, 0.5, 0.4]))
    gaps = []
    real_gap = sparse_metrics.generalization_gap

    def gap(classifier, *args):
        gaps.append((classifier, args))
        return real_gap(classifier, *args)
    monkeypatch.setattr(sparse_metrics, "generalization_gap", gap)
    cfg = BenchmarkConfig(epochs=3, n_train=256, n_val=32, n_eval=48, max_iter=2, aa_version="apgd-ce",
                          pgd_steps=3, lr=0.1, batch_size=64, methods=SPARSE, out=str(tmp_path), verbose=False,
                          base_learners=False, paper_metrics=True)
    results = run_benchmark(cfg)
    md = (tmp_path / "results.md").read_text()
    assert "| method | density | RA best | RA final | RA diff | AA best | AA final | SA best | SA final | " in md
    assert (tmp_path / "sparse.png").exists()
    saved = json.loads((tmp_path / "results.json").read_text())
    dense = saved["reports"]["pgd_at"]["paper"]
    assert "sparsity" not in saved["reports"]["pgd_at"] and dense["flops"]["density"] == 1.0
    for method in SPARSE:
        p = saved["reports"][method]["paper"]
        assert (p["best_epoch"], p["final_epoch"]) == (1, 3)
        assert p["diff"]["pgd"] == pytest.approx(p["best"]["pgd"] - p["final"]["pgd"])
        assert p["final"]["clean"] == saved["reports"][method]["clean_acc"]
        assert p["generalization"]["gap"] == pytest.approx(p["generalization"]["train_pgd"] - p["final"]["pgd"])
        assert all(math.isfinite(p["flops"][k]) and p["flops"][k] > 0 for k in ("training", "inference"))
        if method != "pgd_at":
            assert saved["reports"][method]["sparsity"]["density"] == pytest.approx(0.2, abs=0.01)
            assert p["flops"]["training"] < dense["flops"]["training"]
            assert p["flops"]["inference"] < dense["flops"]["inference"]
    # trained for two more epochs after the best one: the best model's numbers are not the final's
    assert dense["best"] != dense["final"]
    # the gap is measured on the trained (final) model, not a fresh one: it changes with training
    trained, args = gaps[0]
    torch.manual_seed(cfg.seed)
    model = bench.get_model(cfg.model, 1, 10, 8)
    data = bench.load_dataset("digits")
    fresh = bench.build_classifier(model, data, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.device)
    assert not all(torch.equal(a, b) for a, b in zip(fresh.model.state_dict().values(),
                                                      trained.model.state_dict().values()))
    assert real_gap(fresh, *args)["train_pgd"] != dense["generalization"]["train_pgd"]
    assert real_gap(trained, *args)["train_pgd"] == dense["generalization"]["train_pgd"]
    assert results["complete"] and np.isfinite(dense["generalization"]["gap"])


def test_art_trainers_flops_count_trades_clean_pass_and_awps_proxy_pass(digits):
    """ART AWP (PGD mode) makes one more forward+backward pass per example than Madry, that of the
    proxy which finds the weight perturbation; TRADES one more, its clean pass."""
    from types import SimpleNamespace

    from art_generalist.sparse import SparseFlops

    x, y = digits.x_train[:64], digits.y_train[:64]
    cfg = SimpleNamespace(paper_metrics=True, max_iter=2)
    flops = {}
    for method in ("madry", "trades", "awp"):
        clf = make_classifier(bench.get_model("digits_net", 1, 10, 8))  # (ART's TRADES refuses nn.Sequential)
        run = ARTTrainerRun(clf, method, eps=0.1, eps_step=0.05, max_iter=2, val_max_iter=1,
                            track_best=TrackBest())
        run.fit(x, y, nb_epochs=1, batch_size=32, validation_data=(x[:16], y[:16]))
        flops[method] = sparse_metrics.training_info(run, "art_" + method, cfg, (1, 8, 8))["paper"]["flops"]
    fl = SparseFlops.measure(bench.get_model("digits_net", 1, 10, 8), (1, 8, 8))
    extra = 64 * fl.natural_training(sparse=False)
    assert flops["madry"]["training"] == pytest.approx(64 * fl.adversarial_training(2, sparse=False))
    assert flops["awp"]["training"] - flops["madry"]["training"] == pytest.approx(extra)
    assert flops["trades"]["training"] - flops["madry"]["training"] == pytest.approx(extra)
