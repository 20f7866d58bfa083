"""Tests for the bundled architectures and the model registry."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import nn

from art_generalist.data import load_dataset
from art_generalist.models import MODELS, SmallCNN, WideResNet, get_model, list_models

#: Natural input (channels, side) per registered model.
NATURAL_INPUTS = {
    "smallcnn": (1, 28),
    "digits_net": (1, 8),
    "preact_resnet18": (3, 32),
    "resnet18": (3, 32),
    "wrn34_10": (3, 32),
}
SMALLCNN_MNIST_PARAMS = 312_202  # 320 + 9248 + 18496 + 36928 + 205000 + 40200 + 2010
WRN34_10_PARAMS = 46.2e6


@pytest.fixture(scope="module", autouse=True)
def _single_thread() -> Iterator[None]:
    """One intra-op thread: these models are tiny, and two threads collapse under CPU contention."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def wrn() -> nn.Module:
    """WRN-34-10 is big (46M parameters): build it once for the whole module."""
    torch.manual_seed(0)
    return get_model("wrn34_10", 3, 10, 32)


def test_registry_names() -> None:
    assert list_models() == sorted(NATURAL_INPUTS)
    assert set(MODELS) == set(NATURAL_INPUTS)


@pytest.mark.parametrize("name", sorted(NATURAL_INPUTS))
def test_output_shape(name: str, request: pytest.FixtureRequest) -> None:
    channels, side = NATURAL_INPUTS[name]
    num_classes = 7
    if name == "wrn34_10":
        model = request.getfixturevalue("wrn")
        num_classes = 10
    else:
        model = get_model(name, channels, num_classes, side)
    model.eval()
    with torch.no_grad():
        logits = model(torch.rand(2, channels, side, side))
    assert logits.shape == (2, num_classes)
    assert logits.dtype == torch.float32


@pytest.mark.parametrize("name", ["smallcnn", "digits_net", "preact_resnet18", "resnet18"])
def test_input_gradient(name: str) -> None:
    """Attacks need d(loss)/d(input); also checks other channel/size combinations."""
    channels, side = (3, 32) if name == "smallcnn" else NATURAL_INPUTS[name]
    model = get_model(name, channels, 10, side).train()
    x = torch.rand(2, channels, side, side, requires_grad=True)
    loss = nn.functional.cross_entropy(model(x), torch.tensor([0, 1]))
    loss.backward()
    assert x.grad is not None and x.grad.shape == x.shape


def test_smallcnn_matches_trades() -> None:
    model = SmallCNN(in_channels=1, num_classes=10, input_size=28)
    assert n_params(model) == SMALLCNN_MNIST_PARAMS
    assert model.classifier.fc1.in_features == 64 * 4 * 4
    assert torch.all(model.classifier.fc3.weight == 0) and torch.all(model.classifier.fc3.bias == 0)
    assert torch.all(model.feature_extractor.conv1.bias == 0)
    assert SmallCNN(3, 10, input_size=32).classifier.fc1.in_features == 64 * 5 * 5


def test_smallcnn_rejects_small_inputs() -> None:
    with pytest.raises(ValueError, match="at least 16"):
        SmallCNN(input_size=8)


def test_wrn34_10_size(wrn: nn.Module) -> None:
    assert isinstance(wrn, WideResNet)
    assert abs(n_params(wrn) - WRN34_10_PARAMS) <= 0.01 * WRN34_10_PARAMS
    assert len(wrn.block1.layer) == len(wrn.block2.layer) == len(wrn.block3.layer) == 5
    assert wrn.fc.in_features == 640


def test_wrn_rejects_bad_depth() -> None:
    with pytest.raises(ValueError, match="6n\\+4"):
        WideResNet(depth=33)


def test_unknown_model() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'nope'.*smallcnn"):
        get_model("nope", 3, 10, 32)


def test_digits_net_trains_quickly() -> None:
    """DigitsNet reaches > 90% clean test accuracy on sklearn digits within a few CPU seconds."""
    torch.manual_seed(0)
    data = load_dataset("digits", seed=0)
    model = get_model("digits_net", 1, data.nb_classes, 8)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    model.train()
    for _ in range(8):
        for idx in torch.randperm(len(y)).split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(data.x_test)).argmax(1).numpy()
    assert np.mean(pred == data.y_test) > 0.9
