"""Shared pytest fixtures."""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType

import pytest

DATA_ENV_VAR = "ART_GENERALIST_DATA"
REPO_ROOT = Path(__file__).resolve().parents[1]
#: Staged data sets next to the repository (``../shared/data``), used when the env var is unset.
DEFAULT_TEST_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _default_data_env() -> Iterator[None]:
    """Point ``ART_GENERALIST_DATA`` at ``../shared/data`` for the session unless it is set."""
    if os.environ.get(DATA_ENV_VAR):
        yield
        return
    os.environ[DATA_ENV_VAR] = str(DEFAULT_TEST_DATA)
    try:
        yield
    finally:
        os.environ.pop(DATA_ENV_VAR, None)


@pytest.fixture(scope="session")
def art_data_root(_default_data_env: None) -> Path:
    """The data root the tests read staged data sets from."""
    return Path(os.environ[DATA_ENV_VAR]).expanduser()


# -- tiny models and data shared by the trainer tests ----------------------------------------------
import torch  # noqa: E402
from torch import nn  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models run fastest (and steadiest under contention) on one thread."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def digits():
    """The embedded digits set (1x8x8 in [0, 1]), 1,438 train / 359 test."""
    from art_generalist.data import load_dataset

    return load_dataset("digits")


def tiny_net(seed: int = 0, bn: bool = False) -> nn.Module:
    """A small CNN for 1x8x8 digits; optional BatchNorm to exercise buffers."""
    torch.manual_seed(seed)
    layers = [nn.Conv2d(1, 16, 3, padding=1)] + ([nn.BatchNorm2d(16)] if bn else []) + [
        nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 16, 64), nn.ReLU(), nn.Linear(64, 10)]
    return nn.Sequential(*layers)


def make_classifier(model: nn.Module | None = None, lr: float = 0.05, clip_values=(0.0, 1.0),
                    preprocessing=(0.3053, 0.3760), optimizer: bool = True):
    from art.estimators.classification import PyTorchClassifier

    model = model if model is not None else tiny_net()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9) if optimizer else None
    return PyTorchClassifier(model, loss=nn.CrossEntropyLoss(), optimizer=opt, input_shape=(1, 8, 8),
                             nb_classes=10, clip_values=clip_values, preprocessing=preprocessing)


#: The tests' training budget: a 2-step PGD at eps 0.1 and no validation attack. Read-only, as
#: every test file shares it; build a variant with ``{**FAST, "key": value}``.
FAST = MappingProxyType(dict(eps=0.1, eps_step=0.025, max_iter=2, verbose=False, val_max_iter=0))
#: ``FAST`` with a 2-step validation attack (the plug-in hooks see validation run).
FAST_VALIDATED = MappingProxyType({**FAST, "val_max_iter": 2})
#: ``FAST`` with steps of 0.05, so that 2 steps reach the eps ball's edge.
FAST_WIDE_STEPS = MappingProxyType({**FAST, "eps_step": 0.05})
#: ``FAST`` with a 3-step PGD (the learning tests measure robust accuracy).
FAST_3_STEPS = MappingProxyType({**FAST, "max_iter": 3})


@pytest.fixture
def classifier():
    return make_classifier()


def state_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def snapshots_plugin():
    """A plug-in that keeps the shipped model's weights after every epoch (the validated weights)."""
    from art_generalist import Plugin

    class Snapshots(Plugin):
        name = "snapshots"

        def __init__(self):
            self.states = []

        def after_epoch(self, trainer, record):
            self.states.append({k: v.clone() for k, v in trainer.global_space.model.state_dict().items()})

    return Snapshots()

