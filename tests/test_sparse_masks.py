"""Masks (construction, exact density, optimizer interplay, persistence) and layer densities."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.utils.prune as prune
from torch import nn

from art_generalist.sparse import Masks, erk, igq, layer_densities, prunable_weights, uniform
from art_generalist.state.files import atomic_save, safe_load
from tests.conftest import tiny_net

TINY = ["0.weight", "4.weight", "6.weight"]  # conv, linear, linear of tiny_net()


def two_layer(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 10))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- construction ---------------------------------------------------------------------------------
def test_prunable_layers_are_conv_and_linear_weights_only():
    model = tiny_net(bn=True)  # Conv, BN, ReLU, Pool, Flatten, Linear, ReLU, Linear
    assert list(prunable_weights(model)) == ["0.weight", "5.weight", "7.weight"]
    assert list(prunable_weights(model, "conv")) == ["0.weight"]
    dense = Masks.dense(model)
    assert dense.names() == ["0.weight", "5.weight", "7.weight"]
    assert dense.density() == 1.0 and dense.nnz() == dense.numel() == 16 * 9 + 256 * 64 + 64 * 10


@pytest.mark.parametrize("densities", [{"0.weight": 0.3, "4.weight": 0.05, "6.weight": 0.5},
                                       {"0.weight": 1.0, "4.weight": 0.2, "6.weight": 1e-6}])
def test_from_densities_is_exact_per_layer_and_globally(densities):
    model = tiny_net()
    masks = Masks.from_densities(model, densities, gen())
    sizes = {n: w.numel() for n, w in prunable_weights(model).items()}
    expected = {n: max(1, round(densities[n] * sizes[n])) for n in TINY}
    assert masks.layer_nnz() == expected
    assert masks.nnz() == sum(expected.values())
    assert masks.density() == sum(expected.values()) / sum(sizes.values())
    assert masks.layer_densities() == {n: expected[n] / sizes[n] for n in TINY}
    assert all(masks[n].dtype == torch.bool and masks[n].shape == w.shape for n, w in prunable_weights(model).items())


def test_from_densities_follows_the_generator():
    model, d = tiny_net(), {n: 0.2 for n in TINY}
    assert Masks.from_densities(model, d, gen(1)).equal(Masks.from_densities(model, d, gen(1)))
    assert not Masks.from_densities(model, d, gen(1)).equal(Masks.from_densities(model, d, gen(2)))


@pytest.mark.parametrize("layers", ["conv", "conv+linear"])
def test_global_magnitude_keeps_the_largest_weights_with_an_exact_count(layers):
    model = tiny_net()
    weights = prunable_weights(model, layers)
    masks = Masks.global_magnitude(model, 0.2, layers=layers)
    assert masks.names() == list(weights)
    total = sum(w.numel() for w in weights.values())
    assert masks.nnz() == round(0.2 * total)
    kept = torch.cat([w.detach().abs()[masks[n]] for n, w in weights.items()])
    dropped = torch.cat([w.detach().abs()[~masks[n]] for n, w in weights.items()])
    assert kept.min() >= dropped.max()


def test_global_magnitude_count_is_exact_with_ties():
    model = two_layer()
    with torch.no_grad():
        for w in prunable_weights(model).values():
            w.fill_(0.5)  # every |w| ties
    masks = Masks.global_magnitude(model, 0.37, layers="conv+linear")
    assert masks.nnz() == round(0.37 * 900)


def test_apply_zeroes_masked_weights_only():
    model = tiny_net(bn=True)
    masks = Masks.from_densities(model, {n: 0.3 for n in prunable_weights(model)}, gen())
    before = copy.deepcopy(model.state_dict())
    masks.apply_(model)
    for name, value in model.state_dict().items():
        if name in masks:
            assert torch.equal(value[~masks[name]], torch.zeros_like(value[~masks[name]]))
            assert torch.equal(value[masks[name]], before[name][masks[name]])
        else:  # biases and BatchNorm untouched
            assert torch.equal(value, before[name])


def test_rescale_fan_in_restores_each_units_scale_by_hand():
    model = nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.arange(1.0, 13.0).view(3, 4))
    keep = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)  # 4, 1 and 0 kept of 4
    masks = Masks({"weight": keep})
    masks.rescale_fan_in_(model)
    expected = torch.tensor([[1.0, 2, 3, 4], [5 * 2.0, 0, 0, 0], [0, 0, 0, 0]])  # sqrt(4/4), sqrt(4/1), unit left 0
    assert torch.equal(model.weight.detach(), expected)


def test_rescale_fan_in_brings_a_sparse_layer_back_to_the_dense_output_scale():
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 64, 3, bias=False)
    x = torch.randn(32, 64, 8, 8)
    dense = conv(x).std().item()
    masks = Masks.from_densities(conv, {"weight": 0.1}, gen())
    masks.apply_(conv)
    assert conv(x).std().item() < 0.4 * dense  # about sqrt(0.1) of it
    torch.manual_seed(0)
    conv2 = nn.Conv2d(64, 64, 3, bias=False)  # the same initial weights
    masks.rescale_fan_in_(conv2)
    assert conv2(x).std().item() == pytest.approx(dense, rel=0.1)
    assert float(conv2.weight.detach()[~masks["weight"]].abs().sum()) == 0.0


# -- optimizer steps ------------------------------------------------------------------------------
def _train(model, masks, optimizer, apply: bool, apply_optimizer: bool, steps: int = 5):
    torch.manual_seed(1)
    x, y = torch.rand(32, 1, 8, 8), torch.randint(0, 10, (32,))
    if apply:
        masks.apply_(model)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        if apply:
            masks.apply_(model)
        if apply_optimizer:
            masks.apply_to_optimizer_(optimizer, model)


def _masked_abs_sum(model, masks) -> float:
    params = dict(model.named_parameters())
    return sum(float(params[n].detach()[~m].abs().sum()) for n, m in masks.items())


def _masked_state_abs_sum(optimizer, model, masks) -> float:
    params, total = dict(model.named_parameters()), 0.0
    for n, m in masks.items():
        for value in optimizer.state[params[n]].values():
            if torch.is_tensor(value) and value.shape == m.shape:
                total += float(value[~m].abs().sum())
    return total


OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-4),
    "adam": lambda p: torch.optim.Adam(p, lr=0.01),
    "adamw_amsgrad": lambda p: torch.optim.AdamW(p, lr=0.01, amsgrad=True),
}


@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
def test_masked_weights_and_optimizer_state_stay_zero_through_steps(opt):
    model = tiny_net(bn=True)
    masks = Masks.from_densities(model, {n: 0.2 for n in prunable_weights(model)}, gen())
    optimizer = OPTIMIZERS[opt](model.parameters())
    _train(model, masks, optimizer, apply=True, apply_optimizer=True)
    assert _masked_abs_sum(model, masks) == 0.0
    assert _masked_state_abs_sum(optimizer, model, masks) == 0.0
    assert masks.equal(Masks.from_densities(model, {n: 0.2 for n in prunable_weights(model)}, gen()))
    params = dict(model.named_parameters())  # the kept weights did train
    assert all(float(params[n].detach()[m].abs().sum()) > 0 for n, m in masks.items())


@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
def test_without_reapplying_the_masks_weights_and_state_do_not_stay_zero(opt):
    model = tiny_net(bn=True)
    masks = Masks.from_densities(model, {n: 0.2 for n in prunable_weights(model)}, gen())
    masks.apply_(model)
    optimizer = OPTIMIZERS[opt](model.parameters())
    _train(model, masks, optimizer, apply=False, apply_optimizer=False)
    assert _masked_abs_sum(model, masks) > 0.0

    model = tiny_net(bn=True)  # weights re-masked but optimizer state left alone
    optimizer = OPTIMIZERS[opt](model.parameters())
    _train(model, masks, optimizer, apply=True, apply_optimizer=False)
    assert _masked_abs_sum(model, masks) == 0.0
    assert _masked_state_abs_sum(optimizer, model, masks) > 0.0


def test_apply_to_optimizer_leaves_scalar_state_and_other_parameters_alone():
    model = tiny_net()
    masks = Masks.from_densities(model, {n: 0.2 for n in TINY}, gen())
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    _train(model, masks, optimizer, apply=True, apply_optimizer=True, steps=2)
    bias_state = optimizer.state[model[0].bias]
    assert float(bias_state["exp_avg"].abs().sum()) > 0 and float(optimizer.state[model[0].weight]["step"]) == 2
    with pytest.raises(TypeError, match="optimizer"):
        masks.apply_to_optimizer_(model, model)


# -- Hamming distance, persistence, copies -------------------------------------------------------
def test_hamming_distance_is_normalised_over_masked_entries():
    model = tiny_net()
    a = Masks.from_densities(model, {n: 0.2 for n in TINY}, gen())
    b = a.clone()
    assert a.hamming(b) == 0.0
    flipped = b["4.weight"].clone()
    flipped.view(-1)[:100] = ~flipped.view(-1)[:100]
    b["4.weight"] = flipped
    assert a.hamming(b) == 100 / a.numel() == b.hamming(a)
    with pytest.raises(ValueError, match="lacks"):
        a.hamming(Masks({"0.weight": a["0.weight"]}))


def test_state_dict_round_trip_through_a_weights_only_file(tmp_path):
    model = tiny_net()
    masks = Masks.from_densities(model, erk(model, 0.2), gen())
    state = masks.state_dict()
    assert sorted(state) == sorted(f"{n}_mask" for n in TINY)
    assert all(v.dtype == torch.bool for v in state.values())
    torch.save(state, tmp_path / "masks.pt")
    loaded = torch.load(tmp_path / "masks.pt", weights_only=True)
    assert Masks.from_state_dict(loaded).equal(masks)
    atomic_save({"masks": state, "density": masks.density()}, tmp_path / "ckpt.pt")
    other = Masks.dense(model)
    other.load_state_dict(safe_load(tmp_path / "ckpt.pt")["masks"])
    assert other.equal(masks) and other.density() == masks.density()
    state["4.weight_mask"][:] = True  # state_dict hands out copies
    assert not masks["4.weight"].all()


def test_load_state_dict_checks_names_and_shapes_and_reads_prune_masks():
    model = tiny_net()
    masks = Masks.dense(model)
    with pytest.raises(ValueError, match="lacks"):
        masks.load_state_dict({"0.weight_mask": masks["0.weight"]})
    with pytest.raises(ValueError, match="_mask"):
        masks.load_state_dict({n: m for n, m in masks.items()})
    bad = masks.state_dict()
    bad["0.weight_mask"] = torch.ones(3, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="shape"):
        masks.load_state_dict(bad)
    pruned = two_layer()  # a float 0/1 mask from torch.nn.utils.prune, keyed the same way
    prune.l1_unstructured(pruned[0], "weight", amount=0.5)
    from_prune = Masks.from_state_dict({"0.weight_mask": pruned.state_dict()["0.weight_mask"]})
    assert from_prune["0.weight"].dtype == torch.bool and from_prune.density() == 0.5


def test_deepcopy_of_a_masked_model_and_of_the_masks():
    model = tiny_net(bn=True)
    masks = Masks.from_densities(model, igq(model, 0.2), gen())
    masks.apply_(model)
    twin, twin_masks = copy.deepcopy(model), copy.deepcopy(masks)
    assert twin_masks.equal(masks) and twin_masks["0.weight"] is not masks["0.weight"]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), twin.state_dict().values()))
    assert list(twin.state_dict()) == list(tiny_net(bn=True).state_dict())  # no extra keys
    with torch.no_grad():
        for p in twin.parameters():
            p.add_(1.0)
    twin_masks.apply_(twin)
    assert _masked_abs_sum(twin, masks) == 0.0
    assert masks.to("cpu") is masks


# -- errors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [0, 0.0, 1.5, -0.2, float("nan")])
def test_density_outside_the_unit_interval_is_refused(bad):
    model = tiny_net()
    with pytest.raises(ValueError, match=r"\(0, 1\].*" + (r"nan" if bad != bad else re_num(bad))):
        Masks.global_magnitude(model, bad)
    with pytest.raises(ValueError, match=r"densities\['4.weight'\]"):
        Masks.from_densities(model, {"0.weight": 0.5, "4.weight": bad, "6.weight": 0.5})
    for method in ("uniform", "erk", "igq"):
        with pytest.raises(ValueError, match=r"\(0, 1\]"):
            layer_densities(model, bad, method)


def re_num(value: float) -> str:
    return str(value).replace(".", r"\.").replace("-", r"\-")


def test_non_numeric_density_is_refused():
    with pytest.raises(TypeError, match="density"):
        Masks.global_magnitude(tiny_net(), "0.2")
    with pytest.raises(TypeError, match="density"):
        uniform(tiny_net(), True)


@pytest.mark.parametrize("model", [nn.Sequential(nn.ReLU()), nn.Sequential(nn.BatchNorm2d(3), nn.Conv1d(3, 3, 1))])
def test_model_without_prunable_layer_is_refused(model):
    with pytest.raises(ValueError, match="no prunable layer"):
        Masks.dense(model)
    with pytest.raises(ValueError, match="no prunable layer"):
        layer_densities(model, 0.2)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        Masks.dense("not a model")


def test_conv_selection_without_conv_is_refused_and_bad_layers_value():
    with pytest.raises(ValueError, match="Conv2d"):
        Masks.global_magnitude(two_layer(), 0.2, layers="conv")
    with pytest.raises(ValueError, match="'convs'"):
        Masks.dense(tiny_net(), layers="convs")


def test_unknown_and_missing_layer_names_are_refused():
    model = tiny_net()
    with pytest.raises(ValueError, match=r"unknown layers \['5.weight'\]"):
        Masks.from_densities(model, {"0.weight": 0.2, "4.weight": 0.2, "6.weight": 0.2, "5.weight": 0.2})
    with pytest.raises(ValueError, match=r"lacks the layers \['6.weight'\]"):
        Masks.from_densities(model, {"0.weight": 0.2, "4.weight": 0.2})


def test_masks_that_do_not_fit_the_model_are_refused():
    masks = Masks.dense(tiny_net())
    with pytest.raises(ValueError, match="lacks"):
        masks.apply_(two_layer())
    other = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(16 * 16, 64), nn.ReLU(), nn.Linear(64, 10))
    with pytest.raises(ValueError, match=r"Mask `0.weight` has shape \(16, 1, 3, 3\)"):
        masks.apply_(other)
    with pytest.raises(ValueError, match="keep shape"):
        masks["0.weight"] = torch.ones(2, 2, dtype=torch.bool)
    with pytest.raises(KeyError, match="9.weight"):
        masks["9.weight"] = torch.ones(2, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="only 0 and 1"):
        Masks({"w": torch.full((2, 2), 0.5)})
    with pytest.raises(ValueError, match="empty"):
        Masks({})


def test_a_pruned_module_cannot_hold_a_mask():
    model = two_layer()
    prune.random_unstructured(model[2], "weight", amount=0.5)
    with pytest.raises(ValueError, match=r"Layer `2` \(Linear\) cannot hold a mask"):
        Masks.dense(model)


# -- layer densities ------------------------------------------------------------------------------
RESNETISH = {"conv1": (64, 3, 3, 3), "l1": (64, 64, 3, 3), "l2": (128, 64, 3, 3), "l3": (256, 128, 3, 3),
             "l4": (512, 256, 3, 3), "l4b": (512, 512, 3, 3), "short": (512, 256, 1, 1), "fc": (10, 512)}


@pytest.mark.parametrize("method", ["uniform", "erk", "igq"])
@pytest.mark.parametrize("density", [0.01, 0.05, 0.2, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("layers", ["tiny", "resnetish"])
def test_layer_densities_hit_the_global_density_within_one_weight(method, density, layers):
    target = tiny_net() if layers == "tiny" else RESNETISH
    result = layer_densities(target, density, method)
    shapes = RESNETISH if layers == "resnetish" else {n: w.shape for n, w in prunable_weights(target).items()}
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    assert list(result) == list(shapes)
    assert abs(sum(result[n] * sizes[n] for n in sizes) - density * sum(sizes.values())) <= 1.0
    assert all(0.0 < d <= 1.0 for d in result.values())
    masks_total = sum(max(1, round(result[n] * sizes[n])) for n in sizes)
    assert abs(masks_total - density * sum(sizes.values())) <= len(sizes) / 2 + 1


def test_erk_gives_small_layers_higher_density_and_fixes_overflowing_layers_dense():
    result = erk(RESNETISH, 0.2)
    assert result["conv1"] > result["l1"] > result["l2"] > result["l3"] > result["l4b"]
    assert result["fc"] > result["l4b"]
    raw = {n: sum(s) / math.prod(s) for n, s in RESNETISH.items()}
    scale = {n: result[n] / raw[n] for n in RESNETISH if result[n] < 1.0}
    assert max(scale.values()) == pytest.approx(min(scale.values()))  # one epsilon for the sparse layers
    high = erk(RESNETISH, 0.6)
    assert high["conv1"] == 1.0 and high["fc"] == 1.0 and high["l4b"] < 0.6


def test_igq_follows_the_ideal_gas_quota_formula():
    result = igq(RESNETISH, 0.2)
    sizes = {n: math.prod(s) for n, s in RESNETISH.items()}
    forces = [(1.0 / result[n] - 1.0) / sizes[n] for n in RESNETISH]  # d = 1 / (1 + F n)
    assert max(forces) == pytest.approx(min(forces), rel=1e-9)
    order = sorted(RESNETISH, key=sizes.get)
    assert [result[n] for n in order] == sorted(result.values(), reverse=True)


def test_uniform_and_dispatch():
    assert uniform(tiny_net(), 0.3) == {n: 0.3 for n in TINY}
    assert layer_densities(tiny_net(), 0.3, "ERK") == erk(tiny_net(), 0.3)
    with pytest.raises(ValueError, match="'snip'"):
        layer_densities(tiny_net(), 0.3, "snip")
    with pytest.raises(ValueError, match="positive sizes"):
        uniform({"a": (0, 3)}, 0.5)
