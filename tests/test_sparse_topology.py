"""Flying Bird prune/grow rules, the early-bird test and the Flying Bird+ trend tests."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from art_generalist.sparse import (
    Masks,
    cosine_death_rate,
    early_bird_emerged,
    gap_trend,
    gradient_grow,
    igq,
    loss_trend,
    magnitude_prune,
    random_grow,
    update_topology,
)
from tests.conftest import tiny_net


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def sparse_net(density: float = 0.2, seed: int = 0, bn: bool = True):
    model = tiny_net(seed, bn=bn)
    masks = Masks.from_densities(model, igq(model, density), gen(seed))
    masks.apply_(model)
    return model, masks


def train_steps(model, masks, optimizer, steps: int = 3, seed: int = 0) -> None:
    torch.manual_seed(seed)
    x, y = torch.rand(32, 1, 8, 8), torch.randint(0, 10, (32,))
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        masks.apply_(model)
        masks.apply_to_optimizer_(optimizer, model)


# -- death rate -----------------------------------------------------------------------------------
def test_cosine_death_rate_decays_from_initial_to_final():
    assert cosine_death_rate(0, 1000) == pytest.approx(0.5)
    assert cosine_death_rate(500, 1000) == pytest.approx((0.5 + 0.005) / 2)
    assert cosine_death_rate(1000, 1000) == pytest.approx(0.005)
    assert cosine_death_rate(5000, 1000) == pytest.approx(0.005)  # held, not cycled back up
    rates = [cosine_death_rate(t, 100, 0.3, 0.01) for t in range(101)]
    assert all(a > b for a, b in zip(rates, rates[1:])) and rates[0] == pytest.approx(0.3)
    with pytest.raises(ValueError, match="total_steps"):
        cosine_death_rate(0, 0)
    with pytest.raises(ValueError, match="step"):
        cosine_death_rate(-1, 10)


# -- prune and grow rules -------------------------------------------------------------------------
def test_magnitude_prune_removes_exactly_the_smallest_active_entries():
    weight = torch.tensor([0.1, -5.0, 0.2, 3.0, -0.05, 0.0, 7.0, -0.3])
    mask = torch.tensor([True, True, True, True, False, False, True, True])
    new = magnitude_prune(weight, mask, 3)
    # active |w|: 0.1, 5, 0.2, 3, 7, 0.3 -> the three smallest are 0.1, 0.2, 0.3
    assert new.tolist() == [False, True, False, True, False, False, True, False]
    assert mask.sum() == 6  # input untouched
    assert torch.equal(magnitude_prune(weight, mask, 0), mask)
    with pytest.raises(ValueError, match="only 6"):
        magnitude_prune(weight, mask, 7)
    with pytest.raises(ValueError, match="shape"):
        magnitude_prune(weight[:3], mask, 1)


def test_random_grow_activates_exactly_n_inactive_entries_reproducibly():
    mask = torch.zeros(10, 10, dtype=torch.bool)
    mask[:3] = True
    new = random_grow(mask, 17, gen(3))
    assert int(new.sum()) == 30 + 17 and new[:3].all()  # old entries kept
    assert torch.equal(new, random_grow(mask, 17, gen(3)))
    assert not torch.equal(new, random_grow(mask, 17, gen(4)))
    assert int(random_grow(mask, 70, gen()).sum()) == 100
    with pytest.raises(ValueError, match="only 70"):
        random_grow(mask, 71, gen())
    with pytest.raises(TypeError, match="boolean"):
        random_grow(mask.float(), 1)


def test_gradient_grow_picks_the_largest_inactive_gradients():
    mask = torch.tensor([True, False, False, True, False, False])
    grad = torch.tensor([9.0, 0.1, -4.0, 8.0, 2.0, -0.5])
    assert gradient_grow(mask, grad, 2).tolist() == [True, False, True, True, True, False]
    with pytest.raises(ValueError, match="only 4"):
        gradient_grow(mask, grad, 5)


# -- whole-model updates --------------------------------------------------------------------------
@pytest.mark.parametrize("growth", ["random", "gradient"])
def test_density_is_exact_after_every_topology_update(growth):
    model, masks = sparse_net(0.2)
    layer_nnz, nnz = masks.layer_nnz(), masks.nnz()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    g, changed = gen(7), 0.0
    for update in range(6):
        train_steps(model, masks, optimizer, seed=update)
        before = masks.clone()
        rate = cosine_death_rate(update, 6, 0.5, 0.05)
        counts = update_topology(masks, model, rate, growth=growth, generator=g, optimizer=optimizer)
        assert masks.layer_nnz() == layer_nnz and masks.nnz() == nnz
        assert masks.density() == nnz / masks.numel()
        for name, n in layer_nnz.items():
            expected = 0 if n == masks[name].numel() else math.ceil(rate * n)
            assert counts[name] == {"pruned": expected, "grown": expected}
        changed += masks.hamming(before)
        params = dict(model.named_parameters())
        for name, m in masks.items():
            assert params[name].detach()[~m].abs().sum() == 0
            grown = m & ~before[name]
            assert params[name].detach()[grown].abs().sum() == 0  # regrown weights start at 0
            momentum = optimizer.state[params[name]]["momentum_buffer"]
            assert momentum[~m].abs().sum() == 0
    assert changed > 0.1  # the topology did move


def test_just_pruned_and_regrown_weights_are_zeroed():
    model = nn.Sequential(nn.Linear(4, 2))
    masks = Masks({"0.weight": torch.tensor([[True, True, True, False], [False, False, False, False]])})
    masks.apply_(model)
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 2.0, 3.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    model[0].weight.grad = torch.tensor([[5.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    counts = update_topology(masks, model, 0.3, growth="gradient")  # prunes w=1.0, regrows it by gradient
    assert counts == {"0.weight": {"pruned": 1, "grown": 1}}
    assert masks["0.weight"][0].tolist() == [True, True, True, False]
    assert model[0].weight[0].tolist() == [0.0, 2.0, 3.0, 0.0]


def test_dense_and_empty_layers_are_left_alone():
    model = tiny_net()
    masks = Masks.dense(model)
    masks["6.weight"] = torch.zeros_like(masks["6.weight"])
    before = [p.detach().clone() for p in model.parameters()]
    counts = update_topology(masks, model, 0.5, generator=gen())
    assert all(c == {"pruned": 0, "grown": 0} for c in counts.values())
    assert masks.layer_nnz()["0.weight"] == 144 and masks.layer_nnz()["6.weight"] == 0
    assert torch.equal(before[0], model[0].weight)


def test_flying_bird_plus_extra_prune_lowers_density_and_extra_growth_raises_it():
    model, masks = sparse_net(0.2, bn=False)
    start = masks.layer_nnz()
    counts = update_topology(masks, model, 0.5, generator=gen(), extra_prune=0.4)
    for name, n in start.items():
        base = math.ceil(0.5 * n)
        assert counts[name] == {"pruned": base + math.ceil(0.5 * 0.4 * n), "grown": base}
        assert masks.layer_nnz()[name] == n - math.ceil(0.2 * n)
    lower = masks.layer_nnz()
    counts = update_topology(masks, model, 0.5, generator=gen(), growth_factor=1.05)
    for name, n in lower.items():
        assert masks.layer_nnz()[name] == n + math.floor(math.ceil(0.5 * n) * 1.05 + 1e-9) - math.ceil(0.5 * n)
    assert masks.nnz() > sum(lower.values())


def test_update_topology_validates_before_changing_anything():
    model, masks = sparse_net(0.2)
    before = masks.clone()
    with pytest.raises(ValueError, match="Gradient growth needs the gradients"):
        update_topology(masks, model, 0.3, growth="gradient")
    with pytest.raises(ValueError, match="wrong shape"):
        update_topology(masks, model, 0.3, growth="gradient", grads={n: torch.ones(3) for n in masks})
    with pytest.raises(ValueError, match="death_rate"):
        update_topology(masks, model, 1.5)
    with pytest.raises(ValueError, match="'momentum'"):
        update_topology(masks, model, 0.3, growth="momentum")
    with pytest.raises(ValueError, match="lacks"):
        update_topology(masks, nn.Sequential(nn.Linear(3, 3)), 0.3)
    assert masks.equal(before)


# -- early bird -----------------------------------------------------------------------------------
def _converging_history(epochs: int = 12):
    """Global magnitude masks of weights drifting towards a fixed point, noise halving each epoch."""
    model = tiny_net(1)
    target = [p.detach().clone() for p in model.parameters()]
    torch.manual_seed(2)
    noise = [torch.randn_like(p) for p in target]
    history = []
    for t in range(epochs):
        with torch.no_grad():
            for p, w, e in zip(model.parameters(), target, noise):
                p.copy_(w + 0.5 ** t * 0.2 * e)
        history.append(Masks.global_magnitude(model, 0.2, layers="conv"))
    return history


def test_early_bird_fires_on_a_converging_sequence_and_not_before():
    history = _converging_history()
    fired = [early_bird_emerged(history[:t + 1]) for t in range(len(history))]
    assert fired[-1] and not any(fired[:4])  # fewer than five masks never fire
    first = fired.index(True)
    assert all(history[first].hamming(h) <= 0.08 for h in history[first - 4:first])
    assert max(history[first - 1].hamming(h) for h in history[first - 5:first - 1]) > 0.08
    assert early_bird_emerged(history, threshold=0.0) is (history[-1].hamming(history[-5]) == 0.0)


def test_early_bird_does_not_fire_on_masks_that_keep_changing():
    model = tiny_net()
    history = [Masks.from_densities(model, igq(model, 0.2), gen(s)) for s in range(10)]
    assert all(not early_bird_emerged(history[:t + 1]) for t in range(len(history)))
    assert early_bird_emerged(history, threshold=1.0)  # the threshold is what stops it
    with pytest.raises(ValueError, match="window"):
        early_bird_emerged(history, window=1)


# -- Flying Bird+ trends --------------------------------------------------------------------------
def test_gap_trend_fires_when_the_gap_widens():
    assert gap_trend([0.10, 0.12, 0.15, 0.16, 0.20])
    assert not gap_trend([0.20, 0.16, 0.15, 0.12, 0.10])
    assert gap_trend([0.1, 0.2, 0.3, 0.2, 0.1])  # 2 of 4 rises: 0.5 >= 0.5
    assert not gap_trend([0.1, 0.2, 0.1, 0.05, 0.0])  # 1 of 4
    assert not gap_trend([0.2] * 5)  # flat is not widening
    assert not gap_trend([0.1, 0.2, 0.3, 0.4])  # needs epoch_range + 1 values
    assert gap_trend([0.9, 0.1, 0.2, 0.3, 0.4, 0.5])  # only the last four differences count
    assert not gap_trend([0.0, 0.1, 0.2, 0.3, 0.2, 0.1, 0.0, -0.1])
    assert gap_trend([0.3, 0.2, 0.25], epoch_range=2, threshold=0.5)
    assert not gap_trend([0.3, 0.2, 0.25], epoch_range=2, threshold=0.75)


def test_loss_trend_fires_when_the_validation_loss_does_not_fall():
    assert loss_trend([1.0, 1.1, 1.2, 1.3, 1.4])
    assert loss_trend([1.0] * 5)  # flat counts (>= 0)
    assert not loss_trend([1.4, 1.3, 1.2, 1.1, 1.0])
    assert not loss_trend([1.4, 1.5, 1.3, 1.2, 1.1])
    with pytest.raises(ValueError, match="epoch_range"):
        loss_trend([1.0, 2.0], epoch_range=0)
    with pytest.raises(ValueError, match="threshold"):
        gap_trend([1.0, 2.0], threshold=1.5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_masks_topology_and_flops_on_cuda():
    from art_generalist.sparse import flops_report

    model = tiny_net(bn=True).cuda()
    masks = Masks.from_densities(model, igq(model, 0.2), gen())
    assert masks.equal(Masks.from_densities(tiny_net(bn=True), igq(model, 0.2), gen()))  # same draw as on CPU
    masks.apply_(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    nnz = masks.layer_nnz()
    for growth in ("random", "gradient"):
        x, y = torch.rand(16, 1, 8, 8, device="cuda"), torch.randint(0, 10, (16,), device="cuda")
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        masks.apply_(model)
        masks.apply_to_optimizer_(optimizer, model)
        update_topology(masks, model, 0.3, growth=growth, generator=gen(), optimizer=optimizer)
        assert masks.layer_nnz() == nnz
    assert flops_report(model, (1, 8, 8), masks)["inference_dense"] == 2 * (16 * 64 * 9 + 256 * 64 + 64 * 10)
    with pytest.raises(ValueError, match="masks.to"):
        masks.to("cpu").apply_(model)
