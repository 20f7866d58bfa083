"""DigitsNet: a tiny CNN for the 8×8 scikit-learn digits (fast CPU tests and examples)."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["DigitsNet"]


class DigitsNet(nn.Module):
    """conv3x3 pad1 (in→32) ReLU conv3x3 pad1 (32→64) ReLU maxpool2, Linear(64·s·s→128) ReLU
    Linear(128→num_classes), with ``s = input_size // 2`` (4 for 8×8 digits). Returns raw logits.

    PyTorch default initialisation throughout.

    Args:
        in_channels: input channels (1 for digits).
        num_classes: number of output logits.
        input_size: side of the square input; must be at least 2.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, input_size: int = 8) -> None:
        super().__init__()
        if input_size < 2:
            raise ValueError(f"DigitsNet needs inputs of at least 2x2, got input_size={input_size}")
        side = input_size // 2
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(64 * side * side, 128),
            nn.ReLU(),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape ``(N, num_classes)``."""
        return self.classifier(self.features(x).flatten(1))
