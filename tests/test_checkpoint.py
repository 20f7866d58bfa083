"""Checkpoints resume exactly, refuse unsafe files, and export the shipped model safely."""
from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from art_generalist import GeneralistTrainer, SingleLearnerTrainer
from art_generalist.models import get_model
from art_generalist.state.export import load_exported, read_metadata
from art_generalist.state.files import UnsafeCheckpointError, safe_load
from tests.conftest import FAST, make_classifier, tiny_net

WORKER = pathlib.Path(__file__).with_name("_resume_worker.py")


def _tensors(obj, prefix=""):
    """Flatten nested dicts/lists to {path: tensor-or-value}."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(_tensors(v, f"{prefix}/{k}"))
        return out
    if isinstance(obj, (list, tuple)):
        out = {}
        for i, v in enumerate(obj):
            out.update(_tensors(v, f"{prefix}/{i}"))
        return out
    return {prefix: obj}


def _assert_identical(a, b):
    fa, fb = _tensors(a), _tensors(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        if isinstance(fa[k], torch.Tensor):
            assert torch.equal(fa[k], fb[k]), k
        else:
            assert fa[k] == fb[k], k


def test_round_trip_restores_every_tensor(digits, tmp_path):
    trainer = GeneralistTrainer(make_classifier(tiny_net(0, bn=True)), **FAST)
    trainer.fit(digits.x_train[:128], digits.y_train[:128], nb_epochs=2, batch_size=64)
    path = trainer.save_checkpoint(tmp_path / "ckpt.pt")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    fresh = GeneralistTrainer(make_classifier(tiny_net(1, bn=True)), **FAST)
    state = fresh.load_checkpoint(path)
    _assert_identical(fresh.state_dict()["models"], trainer.state_dict()["models"])
    assert fresh.global_ema.num_updates == trainer.global_ema.num_updates > 0
    assert fresh.history == trainer.history and fresh.progress == trainer.progress
    assert state["format_version"] == 1 and state["settings"]["eps"] == 0.1
    assert {"torch", "cuda", "numpy", "python"} <= set(state["rng"])


def _run(args, **kw):
    return subprocess.run([sys.executable, str(WORKER), *map(str, args)], check=True, capture_output=True,
                          text=True, timeout=300, **kw)


@pytest.mark.slow  # the new-process resume is also held by the SIGKILL test below, keep_last by test_guarantees
def test_resume_in_a_new_process_is_bit_identical(tmp_path):
    _run([tmp_path / "full", tmp_path / "full.pt"])
    _run([tmp_path / "half", tmp_path / "first_half.pt", "--stop-after", "2"])
    assert sorted(p.name for p in (tmp_path / "half").iterdir()) == [
        "checkpoint-epoch00001.pt", "checkpoint-epoch00001.pt.sha256",
        "checkpoint-epoch00002.pt", "checkpoint-epoch00002.pt.sha256"]
    _run([tmp_path / "half", tmp_path / "resumed.pt", "--resume"])
    full, resumed = torch.load(tmp_path / "full.pt"), torch.load(tmp_path / "resumed.pt")
    assert resumed["epochs_run"] == [3, 4] and resumed["returned"] == [1, 2, 3, 4] == full["returned"]
    _assert_identical(full["models"], resumed["models"])
    half = torch.load(tmp_path / "first_half.pt")
    assert half["epochs_run"] == [1, 2]
    assert not torch.equal(half["models"]["global"]["0.weight"], full["models"]["global"]["0.weight"])
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == [  # keep_last=2, each with its hash
        "checkpoint-epoch00003.pt", "checkpoint-epoch00003.pt.sha256",
        "checkpoint-epoch00004.pt", "checkpoint-epoch00004.pt.sha256"]


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path):
    _run([tmp_path / "full", tmp_path / "full.pt", "--slow"])
    ckpt = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(WORKER), str(ckpt), str(tmp_path / "never.pt"), "--slow"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (ckpt / "checkpoint-epoch00002.pt").exists():
        assert proc.poll() is None and time.time() < deadline, "worker ended before its second checkpoint"
        time.sleep(0.02)
    time.sleep(0.15)  # inside epoch 3
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (tmp_path / "never.pt").exists()
    newest = sorted(ckpt.glob("checkpoint-epoch*.pt"))[-1]
    done = safe_load(newest)["progress"]["epoch"]
    assert done in (2, 3)
    _run([ckpt, tmp_path / "resumed.pt", "--slow", "--resume"])
    resumed = torch.load(tmp_path / "resumed.pt")
    assert resumed["epochs_run"] == list(range(done + 1, 5))
    _assert_identical(torch.load(tmp_path / "full.pt")["models"], resumed["models"])


class _Payload:
    """Unpickling this would create a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_malicious_checkpoint_is_refused_and_nothing_runs(tmp_path, classifier):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "models": {"w": torch.zeros(2)}, "payload": _Payload(marker)}, evil)
    trainer = GeneralistTrainer(classifier, **FAST)
    with pytest.raises(UnsafeCheckpointError, match=r"pathlib.*Nothing in the file was run"):
        trainer.load_checkpoint(evil)
    with pytest.raises(UnsafeCheckpointError):
        safe_load(evil)
    assert not marker.exists()


def test_checkpoint_errors(tmp_path, digits):
    trainer = GeneralistTrainer(make_classifier(), **FAST)
    with pytest.raises(FileNotFoundError, match="No checkpoint"):
        trainer.load_checkpoint(tmp_path / "missing.pt")
    path = trainer.save_checkpoint(tmp_path / "c.pt")
    with pytest.raises(ValueError, match=r"settings differ.*eps: checkpoint 0.1, trainer 0.2"):
        GeneralistTrainer(make_classifier(), **{**FAST, "eps": 0.2}).load_checkpoint(path)
    with pytest.raises(ValueError, match="written by 'GeneralistTrainer'"):
        SingleLearnerTrainer(make_classifier(), **FAST).load_checkpoint(path)
    state = torch.load(path)
    state["format_version"] = 99
    torch.save(state, tmp_path / "future.pt")
    with pytest.raises(ValueError, match="Unsupported checkpoint format_version 99"):
        trainer.load_checkpoint(tmp_path / "future.pt")
    trainer.fit(digits.x_train[:64], digits.y_train[:64], nb_epochs=2, checkpoint_dir=tmp_path / "run")
    with pytest.raises(ValueError, match="nb_epochs: checkpoint 2, now 3"):
        trainer.fit(digits.x_train[:64], digits.y_train[:64], nb_epochs=3, checkpoint_dir=tmp_path / "run",
                    resume=True)
    with pytest.raises(ValueError, match="needs `checkpoint_dir`"):
        trainer.fit(digits.x_train[:64], digits.y_train[:64], nb_epochs=1, resume=True)


def test_baseline_trainer_checkpoints_too(tmp_path, digits):
    trainer = SingleLearnerTrainer(make_classifier(), objective="trades", **FAST)
    trainer.fit(digits.x_train[:64], digits.y_train[:64], nb_epochs=1)
    path = trainer.save_checkpoint(tmp_path / "b.pt")
    fresh = SingleLearnerTrainer(make_classifier(tiny_net(3)), objective="trades", **FAST)
    fresh.load_checkpoint(path)
    _assert_identical(fresh.state_dict()["models"], trainer.state_dict()["models"])


def test_export_and_load_registry_model(tmp_path, digits):
    model = get_model("digits_net", 1, 10, 8)
    trainer = GeneralistTrainer(make_classifier(model), **FAST)
    trainer.fit(digits.x_train[:128], digits.y_train[:128], nb_epochs=1)
    weights, meta_path = trainer.export(tmp_path / "model.safetensors", report={"clean": 0.5})
    assert meta_path.exists() and weights.read_bytes()[:8] != b"\x80\x02\x8a\x0a"  # not a pickle
    meta = read_metadata(weights)
    assert meta["architecture"]["registry"]["name"] == "digits_net" and meta["report"] == {"clean": 0.5}
    assert meta["clip_values"] == [0.0, 1.0] and meta["threat_model"] == {"norm": "linf", "eps": 0.1}
    clf = load_exported(weights)
    np.testing.assert_allclose(clf.predict(digits.x_test[:32]), trainer.predict(digits.x_test[:32]), atol=1e-6)


def test_export_of_a_custom_model_needs_the_architecture(tmp_path, digits):
    trainer = GeneralistTrainer(make_classifier(tiny_net(0)), **FAST)
    weights, _ = trainer.export(tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match="pass `model=`"):
        load_exported(weights)
    clf = load_exported(weights, model=tiny_net(7))
    np.testing.assert_allclose(clf.predict(digits.x_test[:8]), trainer.predict(digits.x_test[:8]), atol=1e-6)
