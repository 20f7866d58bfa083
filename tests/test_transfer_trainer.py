"""TransferTrainer: the paper's protocol on the shared engine, from a MadryLab-format checkpoint."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from art_generalist.train.plugins import Plugin
from art_generalist.transfer import StepLR, TransferTrainer, load_source

MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


@pytest.fixture(scope="module")
def madry_checkpoint():
    torch.manual_seed(0)
    sd = torchvision.models.resnet18(num_classes=1000).state_dict()
    model = {"module.normalizer.new_mean": torch.tensor(MEAN).reshape(3, 1, 1),
             "module.normalizer.new_std": torch.tensor(STD).reshape(3, 1, 1),
             **{f"module.model.{k}": v for k, v in sd.items()},
             **{f"module.attacker.model.{k}": v for k, v in sd.items()}}
    return {"model": model, "epoch": 90}


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return rng.random((20, 3, 16, 16), dtype=np.float32), rng.integers(0, 3, 20)


def _user_classifier(ckpt, input_shape=(3, 16, 16)):
    from art.estimators.classification import PyTorchClassifier

    src = load_source(ckpt, "resnet18")
    return PyTorchClassifier(src.model, loss=nn.CrossEntropyLoss(), input_shape=input_shape, nb_classes=3,
                             clip_values=(0.0, 1.0), preprocessing=src.preprocessing)


@pytest.mark.parametrize("mode", ["fixed-feature", "full"])
def test_fit_from_a_madrylab_checkpoint(madry_checkpoint, data, mode, tmp_path):
    clf = _user_classifier(madry_checkpoint)
    before = {k: v.clone() for k, v in clf.model.state_dict().items()}
    trainer = TransferTrainer(clf, mode=mode, validation_split=0.25)
    histories = trainer.fit(*data, nb_epochs=1, batch_size=8, checkpoint_dir=tmp_path)
    assert set(histories) == {0.01, 0.001} and trainer.best_lr in (0.01, 0.001)
    assert histories[0.01][0]["examples"] == 15  # 5 of the 20 held out for the lr selection
    assert (tmp_path / "lr_0.01").is_dir() and (tmp_path / "lr_0.001").is_dir()
    tuned = trainer.get_classifier()
    after = tuned.model.state_dict()
    assert after["fc.weight"].shape == (3, 512)
    backbone = [k for k in before if not k.startswith("fc.")]
    changed = [k for k in backbone if not torch.equal(before[k], after[k])]
    if mode == "fixed-feature":
        assert changed == []  # parameters and BatchNorm buffers bit-identical
    else:
        assert any(k.endswith("running_var") for k in changed) and any(k.endswith("conv1.weight") for k in changed)
    assert all(torch.equal(before[k], v) for k, v in clf.model.state_dict().items())  # user's model untouched
    op = tuned.preprocessing_operations[0]
    assert np.allclose(np.asarray(op.mean).reshape(-1), MEAN) and np.allclose(np.asarray(op.std).reshape(-1), STD)
    assert trainer.predict(data[0][:4]).shape == (4, 3)
    opt = trainer.trainer.learner.optimizer
    assert opt.param_groups[0]["momentum"] == 0.9 and opt.param_groups[0]["weight_decay"] == 5e-4


def test_adversarial_fine_tuning_and_evaluate(madry_checkpoint, data):
    from art_generalist import evaluate

    trainer = TransferTrainer(_user_classifier(madry_checkpoint), objective="pgd", lr_grid=(0.01,), eps=2 / 255,
                              eps_step=1 / 255, max_iter=1, val_max_iter=1)
    x, y = data
    perturbations = []  # the largest change the training attack made to each batch, in [0, 1] units
    make = trainer._make

    def spying(lr):
        inner = make(lr)
        attack = inner.learner.attack

        def recorded(u, t):
            x_adv = attack(u, t)
            perturbations.append(float((x_adv - u).abs().max()))
            return x_adv
        inner.learner.attack = recorded
        return inner
    trainer._make = spying
    histories = trainer.fit(x[:12], y[:12], validation_data=(x[12:], y[12:]), nb_epochs=1, batch_size=6)
    # each of the 2 steps trained on PGD examples inside the 2/255 ball (random data: no accuracy to beat)
    assert [r["steps"] for r in histories[0.01]] == [2] and len(perturbations) == 2
    assert all(0.5 / 255 < p <= 2 / 255 + 1e-6 for p in perturbations), perturbations
    before, after = trainer.model.state_dict(), trainer.get_classifier().model.state_dict()
    assert [k for k in before if not torch.equal(before[k], after[k])] == ["fc.weight", "fc.bias"]  # the head alone
    report = evaluate(trainer.get_classifier(), x[12:], y[12:], eps=2 / 255, attacks=("pgd",), pgd_steps=2,
                      checks=None)
    # the fine-tuned classifier was evaluated, on the 8 points asked, attacking its correct ones only
    assert report.n == 8 and report.attacks["pgd"]["n_attacked"] == sum(report.per_example["clean"])
    assert report.clean_acc == np.mean(trainer.predict(x[12:]).argmax(1) == y[12:])


def test_step_schedule():
    sched = StepLR()
    assert [sched(e, 150) for e in (1, 50, 51, 100, 101, 150)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    assert StepLR(2, 0.5)(3, 10) == 0.5
    # progress after iteration i of n in epoch e, e - 1 + (i + 1) / n, gets epoch e's factor
    assert [StepLR(2, 0.5)(2 + i / 3, 10) for i in (1, 2, 3)] == [0.5, 0.5, 0.5]
    assert [StepLR(2, 0.5)(1 + i / 3, 10) for i in (1, 2, 3)] == [1, 1, 1]
    with pytest.raises(ValueError, match="step_epochs"):
        StepLR(0)


def test_bad_arguments(madry_checkpoint):
    clf = _user_classifier(madry_checkpoint)
    with pytest.raises(ValueError, match="`mode` must be one of"):
        TransferTrainer(clf, mode="linear-probe")
    with pytest.raises(ValueError, match="lr_grid"):
        TransferTrainer(clf, lr_grid=())
    with pytest.raises(ValueError, match="lr_grid"):
        TransferTrainer(clf, lr_grid=(0.0,))
    with pytest.raises(ValueError, match="validation_split"):
        TransferTrainer(clf, validation_split=1.0)
    with pytest.raises(ValueError, match="level"):
        TransferTrainer(clf, level=7)
    with pytest.raises(ValueError, match=r"cannot take the classifier's `input_shape` \(1, 16, 16\)"):
        TransferTrainer(_user_classifier(madry_checkpoint, input_shape=(1, 16, 16)))
    with pytest.raises(ValueError, match="no validation or no training"):
        TransferTrainer(clf, validation_split=0.01).fit(np.zeros((10, 3, 16, 16), np.float32), np.zeros(10, int))


def test_an_interrupted_grid_resumes_to_the_uninterrupted_weights(madry_checkpoint, data, tmp_path):
    """Every grid point trains from the trainer's seed, so a run stopped after epoch 1 of each lr and
    resumed from its checkpoints ends bit-identical to an uninterrupted one, and picks the same lr;
    the caller's global RNG is left as it was."""
    def run(checkpoint_dir, **fit):
        torch.manual_seed(0)  # the new head's initial weights
        trainer = TransferTrainer(_user_classifier(madry_checkpoint), mode="full", seed=7, validation_split=0.25)
        state = torch.get_rng_state()
        trainer.fit(*data, nb_epochs=2, batch_size=8, checkpoint_dir=checkpoint_dir, **fit)
        assert torch.equal(torch.get_rng_state(), state)
        return trainer

    full = run(None)  # uninterrupted, without checkpoints
    run(tmp_path / "cut", stop_after=1)
    resumed = run(tmp_path / "cut", resume=True)
    assert resumed.best_lr == full.best_lr and resumed.val_scores == full.val_scores
    for lr in full.lr_grid:
        a, b = full.trainers[lr].state_dict()["models"], resumed.trainers[lr].state_dict()["models"]
        assert all(torch.equal(v, b["global"][k]) for k, v in a["global"].items())
    assert TransferTrainer(_user_classifier(madry_checkpoint)).seed != TransferTrainer(
        _user_classifier(madry_checkpoint)).seed  # drawn from the global RNG when not given


def test_every_grid_point_sees_the_same_shuffles(madry_checkpoint, data):
    orders = {}
    trainer = TransferTrainer(_user_classifier(madry_checkpoint), lr_grid=(0.01, 0.001), seed=3,
                              validation_split=0.25)
    original = trainer._make

    def recording(lr):
        inner = original(lr)
        step = inner.learner.step
        inner.learner.step = lambda u, y, lr=lr: (orders.setdefault(lr, []).append(y.tolist()), step(u, y))[1]
        return inner
    trainer._make = recording
    trainer.fit(*data, nb_epochs=2, batch_size=8)
    assert orders[0.01] == orders[0.001] and len(orders[0.01]) == 4


class _LrRecorder(Plugin):
    """Records the lr each optimizer step used, grouped by epoch."""

    name = "lr_recorder"

    def __init__(self) -> None:
        self.epochs: list[list[float]] = [[]]

    def after_step(self, learner) -> None:
        self.epochs[-1].append(learner.optimizer.param_groups[0]["lr"])

    def after_epoch(self, trainer, record) -> None:
        self.epochs.append([])


@pytest.mark.parametrize("per_iteration", [True, False])
def test_step_lr_used_at_every_iteration_matches_torch_steplr(per_iteration):
    """The lr of every step of epoch k is torch's StepLR(step_size=2, gamma=0.5) stepped once per epoch:
    epochs 1-2 at lr, 3-4 at lr/2, 5 at lr/4 (per iteration it decayed one epoch late)."""
    from art.estimators.classification import PyTorchClassifier

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.ReLU())
    model.fc = nn.Linear(4, 3)
    clf = PyTorchClassifier(model, loss=nn.CrossEntropyLoss(), input_shape=(3, 2, 2), nb_classes=3,
                            clip_values=(0.0, 1.0))
    rec = _LrRecorder()
    trainer = TransferTrainer(clf, mode="full", lr_grid=(0.1,), step_epochs=2, gamma=0.5, plugins=[rec],
                              per_iteration_schedules=per_iteration, seed=0)
    rng = np.random.default_rng(0)
    x, y = rng.random((12, 3, 2, 2), dtype=np.float32), rng.integers(0, 3, 12)
    trainer.fit(x[:9], y[:9], validation_data=(x[9:], y[9:]), nb_epochs=5, batch_size=3)
    ref_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    ref = torch.optim.lr_scheduler.StepLR(ref_opt, step_size=2, gamma=0.5)
    expected = []
    for _ in range(5):
        expected.append([ref_opt.param_groups[0]["lr"]] * 3)  # 3 iterations per epoch
        ref_opt.step()
        ref.step()
    assert rec.epochs[:-1] == [pytest.approx(e) for e in expected]
