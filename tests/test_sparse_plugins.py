"""Flying Bird and Flying Bird+ through fit: exact densities, masked weights and optimizer state at
zero in every model, the adaptive rules on a scripted signal, and clear errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.utils.prune as prune
from torch import nn

from art_generalist import GeneralistTrainer, Plugin, SingleLearnerTrainer
from art_generalist.sparse import FlyingBird, FlyingBirdPlus, RobustBird, SparsityPlugin
from tests.conftest import FAST, make_classifier, tiny_net


@pytest.fixture
def small(digits):
    return digits.x_train[:128], digits.y_train[:128]


def masked_sum(model: nn.Module, masks) -> float:
    params = dict(model.named_parameters())
    return sum(float(params[n].detach()[~m].abs().sum()) for n, m in masks.items())


class CheckedFlyingBird(FlyingBird):
    """Checks every layer's kept count right after each topology update."""

    def _update(self, learner, epoch):
        before = self.masks.layer_nnz()
        previous = self.masks.clone()
        super()._update(learner, epoch)
        assert self.masks.layer_nnz() == before
        self.moved = getattr(self, "moved", 0.0) + self.masks.hamming(previous)


@pytest.mark.parametrize("cls, growth", [(SingleLearnerTrainer, "random"), (GeneralistTrainer, "gradient")])
def test_density_is_exact_after_every_topology_update(small, cls, growth):
    plugin = CheckedFlyingBird(density=0.2, update_every=2, later_factor=1, growth=growth)
    trainer = cls(make_classifier(tiny_net(0, bn=True)), sparsity=plugin, **FAST)
    start = plugin.masks.layer_nnz()
    history = trainer.fit(*small, nb_epochs=3, batch_size=32)
    assert [u["iteration"] for u in plugin.updates] == [2, 4, 6, 8, 10]  # none at the last (12th) iteration
    assert all(u["pruned"] == u["grown"] > 0 and u["nnz"] == sum(start.values()) for u in plugin.updates)
    assert plugin.masks.layer_nnz() == start and plugin.moved > 0
    assert [r["sparsity"]["density"] for r in history] == [plugin.masks.density()] * 3
    assert plugin.masks.density() == pytest.approx(0.2, abs=1e-3)
    assert [u["death_rate"] for u in plugin.updates] == sorted((u["death_rate"] for u in plugin.updates), reverse=True)


def test_one_mask_keeps_every_generalist_model_and_optimizer_state_at_zero(small):
    plugin = FlyingBird(density=0.2, update_every=3, later_factor=1)
    trainer = GeneralistTrainer(make_classifier(tiny_net(0, bn=True)), sparsity=plugin, **FAST)
    trainer.fit(*small, nb_epochs=2, batch_size=32)
    assert len(plugin.updates) == 2 and plugin.primary is trainer.learners[0]
    models = {**{n: s.model for n, s in trainer._models().items()}}
    assert set(models) == {"global", "robust", "natural", "teacher:robust", "teacher:natural"}
    for name, model in models.items():
        assert masked_sum(model, plugin.masks) == 0.0, name
        kept = torch.cat([model.get_parameter(n).detach()[m] for n, m in plugin.masks.items()])
        assert float((kept != 0).float().mean()) > 0.5, name  # the kept weights train
    for lrn in trainer.learners:
        for n, m in plugin.masks.items():
            momentum = lrn.optimizer.state[lrn.model.get_parameter(n)]["momentum_buffer"]
            assert float(momentum[~m].abs().sum()) == 0.0, (lrn.name, n)


class Scripted(SingleLearnerTrainer):
    """Validation numbers fixed in advance (the plug-in reads only the numbers)."""

    def _validate(self, u, y):
        e = len(self.history)
        return {"val_clean_acc": 0.9, "val_pgd_acc": self.script[0][e], "val_pgd_loss": self.script[1][e],
                "val_seconds": 0.0}


def scripted_run(small, plugin, acc, loss):
    x, y = small
    trainer = Scripted(make_classifier(tiny_net(0)), sparsity=plugin, **{**FAST, "val_max_iter": 1})
    trainer.script = (acc, loss)
    history = trainer.fit(x, y, validation_data=(x[:16], y[:16]), nb_epochs=8, batch_size=64)
    return [r["sparsity"]["density"] for r in history], plugin


PLUS = dict(update_every=2, later_factor=1, dynamic_epoch=3, epoch_range=2)
WIDENING = [0.9 - e for e in range(8)]  # val PGD accuracy falling by 1 a epoch: the gap widens whatever training does
FALLING, RISING = [2.0 - 0.1 * e for e in range(8)], [1.0 + 0.1 * e for e in range(8)]


def test_flying_bird_plus_prunes_more_when_the_gap_widens(small):
    densities, plugin = scripted_run(small, FlyingBirdPlus(density=0.2, **PLUS), WIDENING, FALLING)
    assert densities[:3] == [densities[0]] * 3 and densities[0] == pytest.approx(0.2, abs=1e-3)
    # drops at every epoch after epoch 3 that has an update (the last iteration, in epoch 8, has none)
    assert all(b < a for a, b in zip(densities[2:7], densities[3:7])) and densities[7] == densities[6]
    assert [u["extra_prune"] for u in plugin.updates] == [u["epoch"] > 3 for u in plugin.updates]
    assert not any(u["extra_grow"] for u in plugin.updates)
    assert plugin.gaps[1] > plugin.gaps[0] and len(plugin.gaps) == 8
    fb_densities, _ = scripted_run(small, FlyingBird(density=0.2, update_every=2, later_factor=1), WIDENING, FALLING)
    assert fb_densities == [densities[0]] * 8  # plain Flying Bird keeps its density


def test_flying_bird_plus_grows_more_when_the_validation_loss_rises(small):
    narrowing = [e - 0.1 for e in range(8)]
    densities, plugin = scripted_run(small, FlyingBirdPlus(density=0.2, **PLUS), narrowing, RISING)
    assert densities[-1] > densities[0] and not any(u["extra_prune"] for u in plugin.updates)
    assert [u["extra_grow"] for u in plugin.updates] == [u["epoch"] > 3 for u in plugin.updates]


def test_flying_bird_plus_needs_pgd_validation(small):
    x, y = small
    trainer = SingleLearnerTrainer(make_classifier(), sparsity=FlyingBirdPlus(), **{**FAST, "val_max_iter": 1})
    with pytest.raises(ValueError, match="needs `validation_data`"):
        trainer.fit(x, y, nb_epochs=1)
    trainer = SingleLearnerTrainer(make_classifier(), sparsity=FlyingBirdPlus(), **FAST)
    with pytest.raises(ValueError, match="`val_max_iter` >= 1, got 0"):
        trainer.fit(x, y, validation_data=(x[:16], y[:16]), nb_epochs=1)


def test_drop_in_api_with_default_settings(small):
    x, y = small
    trainer = GeneralistTrainer(make_classifier(tiny_net(0)), sparsity=FlyingBird(density=0.2), **FAST)
    history = trainer.fit(x, y, nb_epochs=2, batch_size=32)
    assert history[-1]["sparsity"]["density"] == pytest.approx(0.2, abs=1e-3)
    assert "FlyingBird(density=0.2" in trainer.settings()["plugins"][0]
    pred = trainer.predict(x[:8])
    assert pred.shape == (8, 10) and np.isfinite(pred).all()
    trades = SingleLearnerTrainer(make_classifier(tiny_net(0)), objective="trades",
                                  sparsity=FlyingBird(density=0.5, init="erk"), **FAST)
    assert np.isfinite(trades.fit(x, y, nb_epochs=1, batch_size=64)[0]["learners"]["trades"]["loss"])


class NoLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(10, 64))

    def forward(self, x):
        return x.flatten(1) @ self.w.t()


@pytest.mark.parametrize("cls", [FlyingBird, FlyingBirdPlus, RobustBird])
def test_bad_arguments_are_clear_errors(cls):
    for density in (0, 1.5, -0.2, float("nan")):
        with pytest.raises(ValueError, match=r"`density` must lie in \(0, 1\]"):
            cls(density=density)
    with pytest.raises(TypeError, match="`density` must be a number"):
        cls(density="0.2")
    with pytest.raises(ValueError, match="has no prunable layer"):
        SingleLearnerTrainer(make_classifier(NoLayers()), sparsity=cls(), **FAST)


def test_bad_sparsity_and_settings_are_refused():
    for bad in ("flying-bird", Plugin(), FlyingBird):
        with pytest.raises(TypeError, match="`sparsity` must be a sparsity plug-in"):
            GeneralistTrainer(make_classifier(), sparsity=bad, **FAST)
    with pytest.raises(ValueError, match="unique"):  # one sparsity plug-in per trainer
        SingleLearnerTrainer(make_classifier(), plugins=[FlyingBird()], sparsity=RobustBird(), **FAST)
    model = tiny_net()
    prune.random_unstructured(model[0], "weight", 0.5)
    with pytest.raises(ValueError, match="cannot hold a mask"):
        SingleLearnerTrainer(make_classifier(model), sparsity=FlyingBird(), **FAST)
    for kwargs, match in [(dict(init="er"), "`init` must be one of"), (dict(growth="momentum"), "`growth` must be"),
                          (dict(update_every=0), "`update_every` must be"), (dict(update_every=1.5), "update_every"),
                          (dict(later_factor=0), "`later_factor`"), (dict(dynamic_epoch=-1), "`dynamic_epoch`"),
                          (dict(death_rate=1.2), "`death_rate`"), (dict(seed=-1), "`seed`")]:
        with pytest.raises(ValueError, match=match):
            FlyingBird(**kwargs)
    with pytest.raises(ValueError, match="`prune_ratio`"):
        FlyingBirdPlus(prune_ratio=-0.1)
    with pytest.raises(ValueError, match="`window`"):
        RobustBird(window=1)
    with pytest.raises(ValueError, match="no sparsity plug-in"):
        SingleLearnerTrainer(make_classifier(), **FAST).sparsity_report()
    assert issubclass(FlyingBirdPlus, SparsityPlugin)


def test_fan_in_init_scale_rescales_every_model_alike_and_is_a_setting(small):
    dense = tiny_net(0)
    plugin = FlyingBird(density=0.2, init_scale="fan_in")
    trainer = GeneralistTrainer(make_classifier(tiny_net(0)), sparsity=plugin, **FAST)
    models = [s.model for s in trainer._models().values()]
    for name, mask in plugin.masks.items():
        kept = mask.flatten(1).sum(1).clamp_min(1)
        scale = (mask[0].numel() / kept).sqrt().view(-1, *([1] * (mask.dim() - 1)))
        want = (dict(dense.named_parameters())[name].detach() * scale).masked_fill(~mask, 0)
        for model in models:
            assert torch.equal(dict(model.named_parameters())[name].detach(), want)
    assert plugin.settings()["init_scale"] == "fan_in"
    assert "init_scale" not in FlyingBird(init_scale="none").settings()  # official: older checkpoints resume
    auto = {bn: FlyingBird(density=0.2) for bn in (False, True)}  # the default, "auto"
    for bn, fb in auto.items():
        SingleLearnerTrainer(make_classifier(tiny_net(0, bn=bn)), sparsity=fb, **FAST)
    assert auto[False].settings()["init_scale"] == "fan_in"  # no normalisation layer: rescaled
    assert "init_scale" not in auto[True].settings()  # BatchNorm restores the scale: the official start
    trainer.fit(*small, nb_epochs=1, batch_size=64)
    with pytest.raises(ValueError, match="`init_scale` must be one of"):
        FlyingBird(init_scale="kaiming")
