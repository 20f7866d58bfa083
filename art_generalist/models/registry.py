"""Name → constructor registry for the bundled architectures."""
from __future__ import annotations

from typing import Callable

from torch import nn

from art_generalist.models.digits import DigitsNet
from art_generalist.models.preact_resnet import PreActResNet18
from art_generalist.models.resnet import ResNet18
from art_generalist.models.smallcnn import SmallCNN
from art_generalist.models.wide_resnet import WRN34_10

__all__ = ["MODELS", "DEFAULT_MODELS", "ModelFactory", "default_model", "get_model", "list_models"]

#: ``factory(in_channels, num_classes, input_size) -> nn.Module``.
ModelFactory = Callable[[int, int, int], nn.Module]


def _smallcnn(in_channels: int, num_classes: int, input_size: int) -> nn.Module:
    return SmallCNN(in_channels=in_channels, num_classes=num_classes, input_size=input_size)


def _digits_net(in_channels: int, num_classes: int, input_size: int) -> nn.Module:
    return DigitsNet(in_channels=in_channels, num_classes=num_classes, input_size=input_size)


def _preact_resnet18(in_channels: int, num_classes: int, input_size: int) -> nn.Module:
    return PreActResNet18(in_channels=in_channels, num_classes=num_classes)


def _resnet18(in_channels: int, num_classes: int, input_size: int) -> nn.Module:
    return ResNet18(in_channels=in_channels, num_classes=num_classes)


def _wrn34_10(in_channels: int, num_classes: int, input_size: int) -> nn.Module:
    return WRN34_10(in_channels=in_channels, num_classes=num_classes)


MODELS: dict[str, ModelFactory] = {
    "smallcnn": _smallcnn,
    "digits_net": _digits_net,
    "preact_resnet18": _preact_resnet18,
    "resnet18": _resnet18,
    "wrn34_10": _wrn34_10,
}


#: The architecture each data set is benchmarked with by default.
DEFAULT_MODELS = {"digits": "digits_net", "mnist": "smallcnn", "fashion_mnist": "smallcnn", "cifar10": "resnet18",
                  "cifar100": "resnet18", "svhn": "resnet18"}


def default_model(dataset: str) -> str:
    """The registry name of the default architecture for ``dataset``."""
    try:
        return DEFAULT_MODELS[dataset]
    except KeyError:
        raise ValueError(f"no default model for data set {dataset!r}; known: {sorted(DEFAULT_MODELS)}") from None


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(MODELS)


def get_model(name: str, in_channels: int, num_classes: int, input_size: int) -> nn.Module:
    """Build the registered model ``name`` for ``in_channels × input_size × input_size`` inputs.

    The ResNets and the WRN pool adaptively and ignore ``input_size``; SmallCNN and DigitsNet use
    it to size their first linear layer.

    Raises:
        ValueError: if ``name`` is not registered.
    """
    try:
        factory = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}") from None
    model = factory(in_channels, num_classes, input_size)
    # Recorded so that exported weights can be rebuilt by name (never by importing a class path).
    model.registry_spec = {"name": name, "in_channels": in_channels, "num_classes": num_classes,
                           "input_size": input_size}
    return model
