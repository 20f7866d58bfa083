"""FLOPs accounting against hand counts."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from art_generalist.sparse import Masks, SparseFlops, flops_report, forward_flops_per_layer, uniform
from tests.conftest import state_equal, tiny_net


def two_layer() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 10))


def two_layer_masks(model: nn.Module) -> Masks:
    return Masks.from_densities(model, {"0.weight": 0.5, "2.weight": 0.2}, torch.Generator().manual_seed(0))


def test_two_layer_forward_and_sparse_inference_match_a_hand_count():
    model = two_layer()
    assert forward_flops_per_layer(model, (20,)) == {"0.weight": 2 * 20 * 30, "2.weight": 2 * 30 * 10}
    report = flops_report(model, (20,), two_layer_masks(model))
    assert report["inference_dense"] == 2 * (20 * 30 + 30 * 10)
    assert report["inference_sparse"] == pytest.approx(2 * (0.5 * 600 + 0.2 * 300))
    assert report["density"] == pytest.approx((0.5 * 600 + 0.2 * 300) / 900)
    assert report["layers"]["2.weight"]["density"] == 0.2


def test_two_layer_training_flops_match_a_hand_count():
    model = two_layer()
    report = flops_report(model, (20,), two_layer_masks(model), attack_steps=10)
    fwd = 2 * (600 + 300)
    # training backward: weight gradients of both layers (2 * size each) + input gradient of the
    # second layer only (the data needs none); attack backward: input gradients of both layers.
    bwd, in_bwd = 2 * 600 + 2 * 2 * 300, 2 * 600 + 2 * 300
    assert (report["forward_dense"], report["backward_dense"], report["input_backward_dense"]) == (fwd, bwd, in_bwd)
    assert report["train_natural_dense"] == fwd + bwd
    assert report["train_adversarial_dense"] == 10 * (fwd + in_bwd) + fwd + bwd
    s_fwd, s_bwd, s_in = 0.5 * 1200 + 0.2 * 600, 0.5 * 1200 + 0.2 * 1200, 0.5 * 1200 + 0.2 * 600
    assert report["train_natural_sparse"] == pytest.approx(s_fwd + s_bwd)
    assert report["train_adversarial_sparse"] == pytest.approx(10 * (s_fwd + s_in) + s_fwd + s_bwd)
    assert flops_report(model, (20,), attack_steps=0)["train_adversarial_dense"] == fwd + bwd


def test_conv2d_hand_count():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 5 * 5, 4))
    per_layer = forward_flops_per_layer(model, (3, 10, 10))
    # 5x5 outputs per channel, each a 3*3*3 dot product: 2 * 8 * 25 * 27
    assert per_layer == {"0.weight": 2 * 8 * 25 * 27, "3.weight": 2 * 200 * 4}
    masks = Masks.from_densities(model, {"0.weight": 0.25, "3.weight": 0.5}, torch.Generator().manual_seed(0))
    report = flops_report(model, (3, 10, 10), masks)
    assert report["inference_sparse"] == pytest.approx(0.25 * 10800 + 0.5 * 1600)
    assert report["layers"]["0.weight"]["backward"] == 10800  # first layer: weight gradient only


def test_measurement_leaves_the_model_untouched_and_ignores_inference_mode():
    model = tiny_net(bn=True).train()
    reference = copy.deepcopy(model)
    with torch.inference_mode():  # FlopCounterMode alone reports 0 here
        report = flops_report(model, (1, 8, 8))
    assert report["inference_dense"] == 2 * (16 * 64 * 9 + 256 * 64 + 64 * 10)
    assert model.training and state_equal(model, reference)
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_uniform_density_scales_every_figure_and_keys_match_the_masks():
    model = tiny_net(bn=True)
    masks = Masks.from_densities(model, uniform(model, 0.25), torch.Generator().manual_seed(0))
    flops = SparseFlops.measure(model, (1, 8, 8), masks)
    assert list(flops.layers) == masks.names()
    assert flops.other == {"forward": 0, "backward": 0, "input_backward": 0}
    for fn in (flops.inference, flops.natural_training, lambda s: flops.adversarial_training(7, s)):
        assert fn(True) == pytest.approx(0.25 * fn(False), rel=1e-3)  # 0.25 up to per-layer rounding
    assert flops.adversarial_training(7, False) > 7 * flops.inference(False)


def test_conv_only_masks_leave_linear_layers_dense():
    model = tiny_net()
    masks = Masks.global_magnitude(model, 0.1, layers="conv")
    report = flops_report(model, (1, 8, 8), masks)
    layers = report["layers"]
    assert layers["4.weight"]["density"] == 1.0 and layers["0.weight"]["density"] == pytest.approx(0.1, abs=0.01)
    expected = sum(c["forward"] * c["density"] for c in layers.values())
    assert report["inference_sparse"] == pytest.approx(expected)


class Shared(nn.Module):
    """One Linear called twice, plus a matrix product outside any prunable layer."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 6)
        self.b = self.a

    def forward(self, x):
        h = self.b(torch.relu(self.a(x)))
        return h @ h.transpose(0, 1)


def test_shared_layers_and_unmasked_ops_are_counted():
    model = Shared()
    assert forward_flops_per_layer(model, (6,)) == {"a.weight": 2 * 2 * 36}
    masks = Masks({"a.weight": torch.rand(6, 6, generator=torch.Generator().manual_seed(0)) < 0.5})
    flops = SparseFlops.measure(model, (6,), masks)
    assert flops.other["forward"] == 2 * 6  # the (1x6)@(6x1) product is not scaled
    d = masks.density()
    assert flops.inference(True) == pytest.approx(2 * 6 + d * 144)


class Residual(nn.Module):
    """A stem and one block whose 1x1 shortcut runs beside the main branch (as in ResNet-18)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.main = nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, padding=1))
        self.shortcut = nn.Sequential(nn.Conv2d(4, 8, 1, stride=2), nn.BatchNorm2d(8))
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        h = torch.relu(self.main(h) + self.shortcut(h))
        return self.head(h.mean((2, 3)))


def test_branching_models_attribute_every_backward_flop_to_its_layer():
    flops = SparseFlops.measure(Residual(), (1, 8, 8))
    # FlopCounterMode's own module scopes would charge the main branch's gradients to the shortcut too
    assert flops.other == {"forward": 0, "backward": 0, "input_backward": 0}
    for name, c in flops.layers.items():
        assert c["backward"] == (1 if name == "stem.weight" else 2) * c["forward"], name
        assert c["input_backward"] == c["forward"], name
    assert flops.layers["shortcut.0.weight"]["forward"] == 2 * 8 * 16 * 4


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="no prunable layer"):
        flops_report(nn.Sequential(nn.ReLU(), nn.Flatten()), (4,))
    with pytest.raises(ValueError, match="input_shape"):
        flops_report(two_layer(), (0, 20))
    with pytest.raises(TypeError, match="input_shape"):
        flops_report(two_layer(), 20)
    with pytest.raises(ValueError, match="attack_steps"):
        flops_report(two_layer(), (20,), attack_steps=-1)
    with pytest.raises(ValueError, match="not prunable layers"):
        flops_report(two_layer(), (20,), Masks({"5.weight": torch.ones(3, 3, dtype=torch.bool)}))
    with pytest.raises(TypeError, match="Masks"):
        flops_report(two_layer(), (20,), {"0.weight": torch.ones(30, 20, dtype=torch.bool)})
