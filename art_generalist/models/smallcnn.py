"""SmallCNN: the 4-conv / 3-fc MNIST network of TRADES (Zhang et al., ICML 2019)."""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

__all__ = ["SmallCNN"]


def _feature_size(input_size: int) -> int:
    """Spatial side after conv3-conv3-pool2-conv3-conv3-pool2 without padding."""
    return ((input_size - 4) // 2 - 4) // 2


class SmallCNN(nn.Module):
    """The TRADES ``models/small_cnn.py`` network, returning raw logits.

    Layout (no padding): conv3x3(in→32) ReLU conv3x3(32→32) ReLU maxpool2, conv3x3(32→64) ReLU
    conv3x3(64→64) ReLU maxpool2, Linear(64·s·s→200) ReLU Dropout Linear(200→200) ReLU
    Linear(200→num_classes), where ``s = 4`` for 28×28 inputs (``s = 5`` for 32×32).

    Initialisation follows TRADES: Kaiming-normal conv weights with zero conv biases, the last
    linear layer's weight and bias set to zero, PyTorch defaults for the other linear layers.
    Submodule names (``feature_extractor.conv1`` …, ``classifier.fc3``) match TRADES, so its MNIST
    checkpoints load with ``load_state_dict``.

    Args:
        in_channels: input channels (1 for MNIST).
        num_classes: number of output logits.
        input_size: side of the square input; must be at least 16.
        drop: dropout probability after the first linear layer.
    """

    def __init__(
        self, in_channels: int = 1, num_classes: int = 10, input_size: int = 28, drop: float = 0.5
    ) -> None:
        super().__init__()
        if input_size < 16:
            raise ValueError(f"SmallCNN needs inputs of at least 16x16, got input_size={input_size}")
        side = _feature_size(input_size)
        self.flat_features = 64 * side * side
        self.feature_extractor = nn.Sequential(
            OrderedDict(
                [
                    ("conv1", nn.Conv2d(in_channels, 32, 3)),
                    ("relu1", nn.ReLU()),
                    ("conv2", nn.Conv2d(32, 32, 3)),
                    ("relu2", nn.ReLU()),
                    ("maxpool1", nn.MaxPool2d(2, 2)),
                    ("conv3", nn.Conv2d(32, 64, 3)),
                    ("relu3", nn.ReLU()),
                    ("conv4", nn.Conv2d(64, 64, 3)),
                    ("relu4", nn.ReLU()),
                    ("maxpool2", nn.MaxPool2d(2, 2)),
                ]
            )
        )
        self.classifier = nn.Sequential(
            OrderedDict(
                [
                    ("fc1", nn.Linear(self.flat_features, 200)),
                    ("relu1", nn.ReLU()),
                    ("drop", nn.Dropout(drop)),
                    ("fc2", nn.Linear(200, 200)),
                    ("relu2", nn.ReLU()),
                    ("fc3", nn.Linear(200, num_classes)),
                ]
            )
        )
        for module in self.feature_extractor:
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.zeros_(self.classifier.fc3.weight)
        nn.init.zeros_(self.classifier.fc3.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape ``(N, num_classes)``."""
        features = self.feature_extractor(x)
        return self.classifier(features.flatten(1))
