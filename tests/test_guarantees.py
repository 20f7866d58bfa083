"""The trainers' promises about checkpoints, data and non-finite runs (README, "What we guarantee")."""
from __future__ import annotations

import errno
import logging
import os

import numpy as np
import pytest
import torch
from torch import nn

from art_generalist import GeneralistTrainer, SingleLearnerTrainer
from art_generalist.state import files
from art_generalist.train.checkpoints import list_checkpoints
from tests.conftest import FAST_WIDE_STEPS as FAST
from tests.conftest import make_classifier, tiny_net


def _single(model=None, lr=0.05, **kw):
    return SingleLearnerTrainer(make_classifier(model, lr=lr), **{**FAST, **kw})


def _tanh_net():
    net = tiny_net()
    net[1] = nn.Tanh()
    return net


# -- 1. resume refuses another run ------------------------------------------------------------------
@pytest.mark.parametrize("change, expected", [
    ({"lr": 0.1}, r"optimizers\.pgd: checkpoint \[\{.*'lr': 0\.05.*now \[\{.*'lr': 0\.1"),
    ({"model": "tanh"}, r"models\.global: line 2 is '1:torch\.nn\.modules\.activation\.ReLU'.*Tanh"),
    ({"n": 60}, r"data\.examples: checkpoint 64, now 60; data\.sha256"),
    ({"flip_label": True}, r"data\.sha256: checkpoint"),
    ({"batch_size": 16}, r"data\.batch_size: checkpoint 32, now 16"),
    ({"eps": 0.2}, r"eps: checkpoint 0\.1, now 0\.2"),
])
def test_resume_refuses_changed_settings_model_optimizer_or_data(digits, tmp_path, change, expected):
    x, y = digits.x_train[:64], digits.y_train[:64].copy()
    _single().fit(x, y, batch_size=32, nb_epochs=3, checkpoint_dir=tmp_path, stop_after=1)
    model = _tanh_net() if change.get("model") == "tanh" else None
    trainer = _single(model, lr=change.get("lr", 0.05), eps=change.get("eps", 0.1))
    n = change.get("n", 64)
    if change.get("flip_label"):
        y[0] = (y[0] + 1) % 10
    before = [p.detach().clone() for p in trainer.global_space.model.parameters()]
    with pytest.raises(ValueError, match="belongs to another run.*What differs: .*" + expected):
        trainer.fit(x[:n], y[:n], batch_size=change.get("batch_size", 32), nb_epochs=3, checkpoint_dir=tmp_path,
                    resume=True)
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.global_space.model.parameters()))  # nothing loaded


def test_resume_with_the_same_run_still_continues(digits, tmp_path):
    x, y = digits.x_train[:64], digits.y_train[:64]
    _single().fit(x, y, batch_size=32, nb_epochs=3, checkpoint_dir=tmp_path, stop_after=1)
    trainer = _single()
    history = trainer.fit(x, y, batch_size=32, nb_epochs=3, checkpoint_dir=tmp_path, resume=True)
    assert [h["epoch"] for h in history] == [1, 2, 3] and trainer.progress.epoch == 3


# -- 2. two runs in one folder -------------------------------------------------------------------
def test_a_fresh_fit_refuses_a_folder_holding_another_runs_checkpoints(digits, tmp_path):
    x, y = digits.x_train[:64], digits.y_train[:64]
    _single().fit(x, y, batch_size=32, nb_epochs=2, checkpoint_dir=tmp_path)
    first = (tmp_path / "checkpoint-epoch00002.pt").read_bytes()
    other = _single(lr=0.01)
    with pytest.raises(FileExistsError, match="holds the checkpoints of another run.*resume=True.*overwrite=True"):
        other.fit(x, y, batch_size=32, nb_epochs=2, checkpoint_dir=tmp_path)
    assert (tmp_path / "checkpoint-epoch00002.pt").read_bytes() == first  # run A's checkpoint untouched
    other.fit(x, y, batch_size=32, nb_epochs=1, checkpoint_dir=tmp_path, overwrite=True)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-epoch00001.pt"]  # run A's are gone


# -- 5. non-finite training stops --------------------------------------------------------------------
class _NaNAfter(nn.Module):
    """``tiny_net`` whose training forward returns NaN from its ``after``-th call on."""

    def __init__(self, after: int):
        super().__init__()
        self.net, self.after = tiny_net(), after
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, x):
        out = self.net(x)
        if self.training:
            self.calls += 1
            if int(self.calls) >= self.after:
                return out * float("nan")
        return out


@pytest.mark.parametrize("cls, learner", [(SingleLearnerTrainer, "pgd"), (GeneralistTrainer, "(robust|natural)")])
def test_a_non_finite_loss_stops_the_run_naming_learner_epoch_and_iteration(digits, tmp_path, cls, learner):
    x, y = digits.x_train[:64], digits.y_train[:64]
    trainer = cls(make_classifier(_NaNAfter(after=7)), **FAST)  # 4 iterations per epoch: the 3rd of epoch 2
    with pytest.raises(FloatingPointError, match=f"Learner `{learner}`: its loss became NaN or infinite at "
                                                 f"iteration 3 of epoch 2"):
        trainer.fit(x, y, batch_size=16, nb_epochs=3, checkpoint_dir=tmp_path)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-epoch00001.pt"]  # the good one stays
    trainer.load_checkpoint(tmp_path / "checkpoint-epoch00001.pt", strict_settings=False)
    assert all(torch.isfinite(p).all() for p in trainer.global_space.model.parameters())


def test_nan_lr_and_zero_std_are_refused_before_training(digits):
    with pytest.raises(ValueError, match="lr must be finite"):
        _single(lr=float("nan"))
    with pytest.raises(ValueError, match="std > 0"):
        SingleLearnerTrainer(make_classifier(preprocessing=(0.3, 0.0)), **FAST)


def test_non_finite_weights_are_never_checkpointed_or_exported(digits, tmp_path):
    trainer = _single()
    good = trainer.save_checkpoint(tmp_path / "c.pt").read_bytes()
    with torch.no_grad():
        next(trainer.global_space.model.parameters())[0].fill_(float("inf"))
    with pytest.raises(FloatingPointError, match="Refusing to write the checkpoint"):
        trainer.save_checkpoint(tmp_path / "c.pt")
    assert (tmp_path / "c.pt").read_bytes() == good
    with pytest.raises(FloatingPointError, match="Refusing to write the export"):
        trainer.export(tmp_path / "model.safetensors")
    assert not (tmp_path / "model.safetensors").exists()


# -- 6. fit_loader checks its batches as fit checks arrays ---------------------------------------------
@pytest.mark.parametrize("bad, match", [
    ("0-255", r"x of the loader's batch.*outside the classifier's clip_values"),
    ("nan", r"x of the loader's batch.*NaN"),
    ("fractional", r"y of the loader's batch.*must be integers"),
    ("out_of_range", r"y of the loader's batch.*\[0, 10\)"),
])
def test_fit_loader_checks_each_batch_like_fit(digits, bad, match):
    x = torch.as_tensor(digits.x_train[:64]).clone()
    y = torch.as_tensor(digits.y_train[:64]).long().clone()  # the session data stay untouched
    if bad == "0-255":
        x = x * 255
    elif bad == "nan":
        x[40, 0, 0, 0] = float("nan")  # in the second batch
    elif bad == "fractional":
        y = y.double() + 0.5
    else:
        y[50] = 10
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
    with pytest.raises(ValueError, match=match):
        _single().fit_loader(loader, nb_epochs=1)


# -- 11. damaged checkpoints ----------------------------------------------------------------------------
def test_a_flipped_bit_in_a_checkpoint_is_detected(tmp_path):
    trainer = _single()
    path = trainer.save_checkpoint(tmp_path / "c.pt")
    data = bytearray(path.read_bytes())
    weight = next(trainer.global_space.model.parameters()).detach().contiguous().numpy().tobytes()
    at = bytes(data).find(weight)
    assert at > 0
    data[at + 5] ^= 0x10  # one bit of a stored weight: torch itself would load it silently
    path.write_bytes(bytes(data))
    with pytest.raises(files.CorruptCheckpointError, match="corrupt: its SHA-256/size"):
        _single().load_checkpoint(path)


def test_a_truncated_newest_checkpoint_falls_back_to_the_newest_intact_one(digits, tmp_path, caplog):
    x, y = digits.x_train[:64], digits.y_train[:64]
    _single().fit(x, y, batch_size=32, nb_epochs=3, checkpoint_dir=tmp_path, stop_after=2)
    newest = tmp_path / "checkpoint-epoch00002.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    with caplog.at_level(logging.INFO, logger="art_generalist"):
        history = _single().fit(x, y, batch_size=32, nb_epochs=3, checkpoint_dir=tmp_path, resume=True)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    messages = [r.getMessage() for r in caplog.records]
    assert any(r.levelno == logging.WARNING and "skipping a damaged checkpoint" in r.getMessage()
               and "epoch00002" in r.getMessage() for r in caplog.records)
    assert any("resumed from checkpoint" in m and "epoch00001.pt (epoch 1)" in m for m in messages)


# -- 13. a full disk names the path and the free space -------------------------------------------------
def test_a_full_disk_during_a_checkpoint_names_the_path_and_keeps_the_old_file(tmp_path, monkeypatch):
    trainer = _single()
    good = trainer.save_checkpoint(tmp_path / "c.pt").read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "fsync", full)
    with pytest.raises(OSError, match=r"Could not write .*c\.pt: the disk is full \(.* MiB free"):
        trainer.save_checkpoint(tmp_path / "c.pt")
    assert (tmp_path / "c.pt").read_bytes() == good
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind


def test_stale_temporaries_of_a_killed_write_are_removed_when_a_run_starts(digits, tmp_path):
    stale = tmp_path / ".checkpoint-epoch00001.pt.abc123.tmp"
    tmp_path.mkdir(exist_ok=True)
    stale.write_bytes(b"half a checkpoint")
    _single().fit(digits.x_train[:32], digits.y_train[:32], batch_size=32, nb_epochs=1, checkpoint_dir=tmp_path)
    assert not stale.exists()
    assert np.isfinite(len(list_checkpoints(tmp_path)))


def test_every_promise_in_the_readme_names_tests_that_exist():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    text = (root / "README.md").read_text(encoding="utf-8")
    section = text.split("### What we guarantee", 1)[1].split("\n## ", 1)[0]
    named = re.findall(r"`(test_\w+\.py)::(test_\w+)`", section)
    assert len(named) >= 20
    missing = [f"{f}::{t}" for f, t in named
               if not re.search(rf"^def {t}\(", (root / "tests" / f).read_text(encoding="utf-8"), re.M)]
    assert not missing


def test_keep_last_keeps_the_newest_checkpoints_each_with_its_hash(digits, tmp_path):
    _single().fit(digits.x_train[:32], digits.y_train[:32], batch_size=32, nb_epochs=4, checkpoint_dir=tmp_path,
                  keep_last=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint-epoch00003.pt", "checkpoint-epoch00003.pt.sha256",
        "checkpoint-epoch00004.pt", "checkpoint-epoch00004.pt.sha256"]
