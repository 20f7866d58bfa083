"""Robust Bird: the early-bird search (stage 1) stops when the masks stabilise, the ticket goes
into every model, and stage 2 trains with that mask fixed."""
from __future__ import annotations

import pytest
import torch

from art_generalist import GeneralistTrainer, Plugin, SingleLearnerTrainer
from art_generalist.sparse import Masks, RobustBird
from tests.conftest import FAST, make_classifier, state_equal, tiny_net


@pytest.fixture
def small(digits):
    return digits.x_train[:128], digits.y_train[:128]


class MaskSnapshots(Plugin):
    name = "snapshots"

    def __init__(self, plugin):
        self.plugin, self.masks = plugin, []

    def after_epoch(self, trainer, record):
        self.masks.append(self.plugin.masks.clone())


def test_search_stops_when_the_masks_stop_changing(small):
    x, y = small
    frozen = RobustBird(density=0.2, threshold=0.0, window=3, max_search_epochs=10)
    trainer = SingleLearnerTrainer(make_classifier(tiny_net(0), lr=0.0), sparsity=frozen, **FAST)
    trainer.fit(x, y, nb_epochs=1, batch_size=64)  # lr 0: the weights, hence the masks, never change
    assert frozen.stage1["epochs"] == 3 and frozen.stage1["emerged"]
    assert frozen.stage1["distances"] == [None, None, 0.0]

    plugin = RobustBird(density=0.2, threshold=0.08, window=3, max_search_epochs=6)
    trainer = SingleLearnerTrainer(make_classifier(tiny_net(0)), sparsity=plugin, **FAST)
    trainer.fit(x, y, nb_epochs=1, batch_size=64)
    distances, s = plugin.stage1["distances"], plugin.stage1
    assert distances[:2] == [None, None] and len(distances) == s["epochs"] <= 6
    assert all(d > 0.08 for d in distances[2:-1])  # it stops at the first epoch within the threshold
    assert s["emerged"] == (distances[-1] is not None and distances[-1] <= 0.08)
    assert s["emerged"] or s["epochs"] == 6
    assert s["examples"] == 128 * s["epochs"] and s["train_flops"] == 128 * s["epochs"] * \
        plugin.flops.natural_training(sparse=False)

    never = RobustBird(density=0.2, threshold=0.0, window=2, max_search_epochs=2)
    trainer = SingleLearnerTrainer(make_classifier(tiny_net(0), lr=0.5), sparsity=never, **FAST)
    trainer.fit(x, y, nb_epochs=1, batch_size=64)
    assert never.stage1["epochs"] == 2 and not never.stage1["emerged"] and never.stage1["distances"][1] > 0


def test_stage_two_trains_the_ticket_with_a_fixed_mask(small):
    x, y = small
    plugin = RobustBird(density=0.2, window=2, max_search_epochs=3)
    snapshots = MaskSnapshots(plugin)
    trainer = SingleLearnerTrainer(make_classifier(tiny_net(0, bn=True)), plugins=[snapshots], sparsity=plugin, **FAST)
    history = trainer.fit(x, y, nb_epochs=3, batch_size=32)
    ticket = snapshots.masks[0]
    assert all(m.equal(ticket) for m in snapshots.masks) and plugin.masks.equal(ticket)
    assert ticket.nnz() == round(0.2 * ticket.numel())  # global magnitude over Conv2d + Linear
    model = trainer.get_classifier().model
    assert all(float(model.get_parameter(n).detach()[~m].abs().sum()) == 0 for n, m in ticket.items())
    assert [r["sparsity"]["updates"] for r in history] == [0, 0, 0]
    trainer.fit(x, y, nb_epochs=1, batch_size=32)  # a second fit keeps the ticket: no new search
    assert plugin.masks.equal(ticket) and plugin.stage1["epochs"] <= 3
    report = trainer.sparsity_report()
    assert report["training_flops"]["stage1"]["epochs"] == plugin.stage1["epochs"]
    assert report["training_flops"]["total_dense"] == pytest.approx(
        plugin.stage1["train_flops"] + sum(r["sparsity"]["train_flops_dense"] for r in trainer.history))


def test_the_ticket_goes_into_every_generalist_model(small):
    x, y = small
    plugin = RobustBird(density=0.3, window=2, max_search_epochs=2)
    trainer = GeneralistTrainer(make_classifier(tiny_net(0, bn=True)), sparsity=plugin, **FAST)
    assert plugin.masks is None
    for lrn in trainer.learners:  # some optimizer state, which the ticket resets
        lrn.optimizer.state[next(lrn.model.parameters())]["momentum_buffer"] = torch.ones(1)
    u, yt = trainer._to_device(x, y)
    batches = lambda: iter([(u[i:i + 32], yt[i:i + 32]) for i in range(0, 128, 32)])  # noqa: E731
    before = {k: v.clone() for k, v in trainer.global_space.model.state_dict().items()}
    plugin.begin_fit(trainer, 2, 4, batches, None)
    shipped = trainer.global_space.model
    assert not state_equal(shipped, tiny_net(0, bn=True)) and any(
        not torch.equal(v, before[k]) for k, v in shipped.state_dict().items())  # stage 1 trained it
    assert not shipped.training  # Generalist's global learner stays in eval mode
    assert plugin.masks.equal(Masks.global_magnitude(shipped, 0.3, layers="conv+linear"))
    for name, space in trainer._models().items():
        assert state_equal(space.model, shipped), name
        assert sum(float(space.model.get_parameter(n).detach()[~m].abs().sum()) for n, m in plugin.masks.items()) == 0
    assert all(not lrn.optimizer.state for lrn in trainer.learners)
    history = trainer.fit(x, y, nb_epochs=2, batch_size=32)  # the ticket exists: straight to stage 2
    assert plugin.stage1["epochs"] == 2 and len(history) == 2
    for name, space in trainer._models().items():
        masked = sum(float(space.model.get_parameter(n).detach()[~m].abs().sum()) for n, m in plugin.masks.items())
        assert masked == 0, name
