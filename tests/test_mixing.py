"""The key-wise weight mixer and the EMA teachers."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from art_generalist.core.mixing import ModelEMA, WeightMixer
from art_generalist.core.schedules import ema_decay
from tests.conftest import state_equal, tiny_net


def _bn_net(seed: int) -> nn.Module:
    net = tiny_net(seed, bn=True)
    with torch.no_grad():  # distinct BN statistics and counters per seed
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
        net[1].num_batches_tracked.fill_(10 * (seed + 1))
    return net


@pytest.fixture
def nets():
    return _bn_net(0), _bn_net(1), _bn_net(2)  # target, robust, natural


@pytest.mark.parametrize("beta,expected", [(1.0, 1), (0.0, 2)])
def test_extreme_beta_gives_one_teacher(nets, beta, expected):
    target, robust, natural = nets
    WeightMixer().mix_(target, [robust, natural], [beta, 1 - beta], decay=0.0)
    assert state_equal(target, nets[expected])


def test_mix_lies_between_sources_and_is_exact(nets):
    target, robust, natural = nets
    WeightMixer().mix_(target, [robust, natural], [0.3, 0.7], decay=0.0)
    for key, t in target.state_dict().items():
        r, n = robust.state_dict()[key], natural.state_dict()[key]
        if t.is_floating_point():
            torch.testing.assert_close(t, 0.3 * r + 0.7 * n)
            assert bool(((t >= torch.minimum(r, n) - 1e-6) & (t <= torch.maximum(r, n) + 1e-6)).all())


def test_ema_decay_formula(nets):
    target, robust, natural = nets
    before = {k: v.clone() for k, v in target.state_dict().items()}
    WeightMixer().mix_(target, [robust, natural], [0.4, 0.6], decay=0.9)
    w = target.state_dict()["0.weight"]
    torch.testing.assert_close(w, 0.9 * before["0.weight"] + 0.1 * (0.4 * robust.state_dict()["0.weight"]
                                                                     + 0.6 * natural.state_dict()["0.weight"]))


def test_integer_buffers_and_masks_are_copied_not_interpolated(nets):
    target, robust, natural = nets
    for i, net in enumerate(nets):
        net.register_buffer("prune_mask", (torch.arange(6) % (i + 2) == 0).float())
    WeightMixer().mix_(target, [robust, natural], [0.3, 0.7], decay=0.5)
    assert target[1].num_batches_tracked.dtype == torch.long
    assert int(target[1].num_batches_tracked) == int(natural[1].num_batches_tracked)  # the dominant source
    assert torch.equal(target.prune_mask, natural.prune_mask)
    assert set(target.prune_mask.tolist()) <= {0.0, 1.0}


def test_buffers_copied_when_not_mixed(nets):
    target, robust, natural = nets
    WeightMixer(mix_buffers=False).mix_(target, [robust, natural], [0.8, 0.2], decay=0.5)
    assert torch.equal(target[1].running_mean, robust[1].running_mean)
    assert not torch.equal(target[0].weight, robust[0].weight)


def test_key_and_shape_mismatch_raise(nets):
    target, robust, _ = nets
    with pytest.raises(ValueError, match="state-dict keys differ"):
        WeightMixer().mix_(target, [tiny_net(3, bn=False)], [1.0])
    wide = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1))
    with pytest.raises(ValueError, match="keys differ"):
        WeightMixer().copy_(target, wide)
    other = _bn_net(4)
    other[0] = nn.Conv2d(1, 16, 5, padding=2)
    with pytest.raises(ValueError, match="has shape"):
        WeightMixer().mix_(target, [other], [1.0])


def test_invalid_weights_raise(nets):
    target, robust, natural = nets
    with pytest.raises(ValueError, match="sum to 1"):
        WeightMixer().mix_(target, [robust, natural], [0.5, 0.6])
    with pytest.raises(ValueError, match="one weight per source"):
        WeightMixer().mix_(target, [robust, natural], [1.0])


def test_ema_warmup_schedule():
    assert ema_decay(0) == pytest.approx(0.1)
    assert ema_decay(10) == pytest.approx(11 / 20)
    assert ema_decay(8990) == pytest.approx(0.999)
    assert ema_decay(10**6) == 0.999
    assert ema_decay(0, warmup=False) == 0.999
    assert all(ema_decay(t) <= ema_decay(t + 1) for t in range(0, 10000, 7))


def test_model_ema_tracks_model_with_warmup():
    model = tiny_net(0)
    ema = ModelEMA(model, decay=0.999)
    assert not any(p.requires_grad for p in ema.module.parameters()) and not ema.module.training
    start = ema.module[0].weight.clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.update(model)
    torch.testing.assert_close(ema.module[0].weight, 0.1 * start + 0.9 * model[0].weight)
    assert ema.num_updates == 1 and ema.current_decay() == pytest.approx(2 / 11)
