"""The extension points, each exercised by a tiny test double: a mask re-applied after every
step (sparse training), a parameter filter (frozen backbones), a gradient-reduction point
(multi-process training), and state that joins checkpoints and exports."""
from __future__ import annotations

import json

import pytest
import torch

from art_generalist import GeneralistTrainer, Plugin, SingleLearnerTrainer
from tests.conftest import FAST, make_classifier, tiny_net


@pytest.fixture
def small(digits):
    return digits.x_train[:128], digits.y_train[:128]


class FixedMask(Plugin):
    """Zeroes every other weight of the first convolution in every model (setup) and in the
    stepped learner after each optimizer step."""

    name = "mask"

    def setup(self, trainer):
        self.mask = torch.ones_like(trainer.global_space.model[0].weight)
        self.mask.view(-1)[::2] = 0
        for space in trainer._models().values():
            self._apply(space.model)

    def after_step(self, learner):
        self._apply(learner.model)

    def _apply(self, model):
        with torch.no_grad():
            model[0].weight.mul_(self.mask)


class FreezeAllButHead(Plugin):
    name = "freeze"

    def trainable(self, name, model):
        return model[-1].parameters()


class ZeroGradients(Plugin):
    """A gradient reduction whose result is zero (as if every other rank cancelled this one)."""

    name = "reduce"

    def __init__(self):
        self.calls = []

    def reduce_gradients(self, learner):
        self.calls.append(learner.name)
        for p in learner.model.parameters():
            if p.grad is not None:
                p.grad.zero_()


class Counter(Plugin):
    name = "counter"

    def __init__(self):
        self.steps = torch.zeros((), dtype=torch.long)

    def after_step(self, learner):
        self.steps += 1

    def after_epoch(self, trainer, record):
        record["counter_steps"] = int(self.steps)

    def state_dict(self):
        return {"steps": self.steps.clone()}

    def load_state_dict(self, state):
        self.steps = state["steps"].clone()

    def export_metadata(self):
        return {"steps": int(self.steps)}


@pytest.mark.parametrize("cls", [GeneralistTrainer, SingleLearnerTrainer])
def test_mask_after_every_step_keeps_masked_weights_zero(small, cls):
    plugin = FixedMask()
    trainer = cls(make_classifier(tiny_net(0)), plugins=[plugin], **FAST)
    trainer.fit(*small, nb_epochs=2, batch_size=32)
    for name, space in trainer._models().items():
        weight = space.model[0].weight
        assert torch.equal(weight[plugin.mask == 0], torch.zeros_like(weight[plugin.mask == 0])), name
        assert (weight[plugin.mask == 1] != 0).all(), name


@pytest.mark.parametrize("cls", [GeneralistTrainer, SingleLearnerTrainer])
def test_parameter_filter_freezes_the_rest(small, cls):
    user = make_classifier(tiny_net(0))
    trainer = cls(user, plugins=[FreezeAllButHead()], copy_classifier=True, **FAST)
    trainer.fit(*small, nb_epochs=1, batch_size=32)
    learners = trainer.learners if cls is GeneralistTrainer else [trainer.learner]
    for lrn in learners:
        trained = {id(p) for g in lrn.optimizer.param_groups for p in g["params"]}
        assert trained == {id(p) for p in lrn.model[-1].parameters()}
        body = lrn.model[0]
        assert not body.weight.requires_grad
        # exact for the single learner; Generalist's distributions copy in G, a mix of EMAs of the
        # same frozen values, equal up to float rounding
        atol = 0 if cls is SingleLearnerTrainer else 1e-6
        torch.testing.assert_close(body.weight, user.model[0].weight, rtol=0, atol=atol)
        assert not torch.equal(lrn.model[-1].weight, user.model[-1].weight)
    if cls is SingleLearnerTrainer:  # the shipped model's backbone is untouched
        assert torch.equal(trainer.get_classifier().model[0].weight, user.model[0].weight)


def test_gradient_reduction_point_runs_before_each_optimizer_step(small):
    plugin = ZeroGradients()
    trainer = GeneralistTrainer(make_classifier(tiny_net(0)), plugins=[plugin], **FAST)
    trainer.fit(*small, nb_epochs=1, batch_size=32)
    assert plugin.calls == ["robust", "natural"] * 4
    plugin, user = ZeroGradients(), make_classifier(tiny_net(0))
    trainer = SingleLearnerTrainer(user, plugins=[plugin], **FAST)
    trainer.fit(*small, nb_epochs=1, batch_size=32)
    assert len(plugin.calls) == 4  # SGD without weight decay on zeroed gradients: no change at all
    assert all(torch.equal(a, b) for a, b in zip(trainer.get_classifier().model.parameters(),
                                                 user.model.parameters()))


def test_plugin_state_joins_checkpoints_history_and_export(small, tmp_path):
    counter = Counter()
    trainer = SingleLearnerTrainer(make_classifier(tiny_net(0)), plugins=[counter], **FAST)
    history = trainer.fit(*small, nb_epochs=2, batch_size=32, checkpoint_dir=tmp_path / "ck")
    assert [r["counter_steps"] for r in history] == [4, 8]
    fresh_counter = Counter()
    fresh = SingleLearnerTrainer(make_classifier(tiny_net(0)), plugins=[fresh_counter], **FAST)
    fresh.load_checkpoint(tmp_path / "ck" / "checkpoint-epoch00002.pt")
    assert int(fresh_counter.steps) == 8
    _, meta = trainer.export(tmp_path / "model.safetensors")
    assert json.loads(meta.read_text())["plugins"] == {"counter": {"steps": 8}}
    no_plugin = SingleLearnerTrainer(make_classifier(tiny_net(0)), **FAST)
    with pytest.raises(ValueError, match="settings differ"):
        no_plugin.load_checkpoint(tmp_path / "ck" / "checkpoint-epoch00002.pt")


def test_bad_plugins_are_refused():
    with pytest.raises(TypeError, match="Plugin"):
        GeneralistTrainer(make_classifier(), plugins=[object()], **FAST)
    with pytest.raises(ValueError, match="unique"):
        GeneralistTrainer(make_classifier(), plugins=[Counter(), Counter()], **FAST)

    class FreezeAll(Plugin):
        def trainable(self, name, model):
            return []

    with pytest.raises(ValueError, match="no trainable parameter"):
        SingleLearnerTrainer(make_classifier(), plugins=[FreezeAll()], **FAST)


@pytest.mark.parametrize("cls", [GeneralistTrainer, SingleLearnerTrainer])
@pytest.mark.parametrize("copy_classifier", [False, True])
def test_a_scheduler_of_the_users_optimizer_drives_a_trainer_whose_plugin_froze_parameters(small, cls,
                                                                                           copy_classifier):
    """The plug-in's freezing swaps the trained classifier's optimizer for a clone on the trainable
    parameters; ``fit(scheduler=)`` is still built on the optimizer the user passed, and drives it."""
    user = make_classifier(tiny_net(0))
    users_optimizer = user.optimizer
    sched = torch.optim.lr_scheduler.StepLR(users_optimizer, step_size=1, gamma=0.5)
    trainer = cls(user, plugins=[FreezeAllButHead()], copy_classifier=copy_classifier, **FAST)
    history = trainer.fit(*small, nb_epochs=2, batch_size=64, scheduler=sched)
    lr0 = users_optimizer.defaults["lr"]
    driven = [v["lr"] for record in history for k, v in record["learners"].items() if cls is SingleLearnerTrainer
              or k == "robust"]
    assert driven == [pytest.approx(lr0), pytest.approx(lr0 / 2)]
    assert users_optimizer.param_groups[0]["lr"] == pytest.approx(lr0 / 4)
