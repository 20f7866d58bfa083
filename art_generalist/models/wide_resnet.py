"""Wide ResNet (Zagoruyko & Komodakis, 2016) as used by Madry et al. and TRADES on CIFAR-10."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["WideBasicBlock", "WideResNet", "WRN34_10"]


class WideBasicBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3(stride), BN-ReLU-[dropout]-conv3x3.

    When the width changes, the shortcut is a 1×1 conv applied to the pre-activated input
    (as in the TRADES / Madry implementation); otherwise it is the identity on the raw input.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes and stride == 1
        # Attribute name kept from the reference code so its checkpoints' keys match.
        self.convShortcut: nn.Module | None = None
        if not self.equal_in_out:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu(self.bn1(x))
        out = F.relu(self.bn2(self.conv1(act)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        shortcut = x if self.convShortcut is None else self.convShortcut(act)
        return shortcut + out


class _NetworkBlock(nn.Module):
    """A stage of ``n`` blocks; only the first one changes width/stride."""

    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int, drop_rate: float) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *[
                WideBasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate)
                for i in range(n)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-widen: 3×3 stem (16 ch), three stages of ``(depth-4)/6`` blocks with
    16k/32k/64k channels and strides 1/2/2, BN-ReLU, global average pool, linear.

    Initialisation as in TRADES: conv weights ~ N(0, 2/(k·k·out_channels)) (Kaiming normal,
    fan-out), BN weight 1 / bias 0, linear bias 0. Parameter names match TRADES'
    ``models/wideresnet.py`` except that its unused ``sub_block1`` is omitted; load TRADES
    checkpoints after dropping the ``sub_block1.*`` keys. Global pooling is adaptive (32×32 inputs
    give TRADES' 8×8 average pool).

    Args:
        depth: total depth, ``depth ≡ 4 (mod 6)``.
        widen_factor: width multiplier ``k``.
        in_channels: input channels.
        num_classes: number of output logits.
        drop_rate: dropout inside each block (0 for Madry/TRADES).
    """

    def __init__(
        self,
        depth: int = 34,
        widen_factor: int = 10,
        in_channels: int = 3,
        num_classes: int = 10,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"WideResNet depth must be 6n+4 with n >= 1, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.block1 = _NetworkBlock(n, widths[0], widths[1], 1, drop_rate)
        self.block2 = _NetworkBlock(n, widths[1], widths[2], 2, drop_rate)
        self.block3 = _NetworkBlock(n, widths[2], widths[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape ``(N, num_classes)``."""
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.relu(self.bn1(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


def WRN34_10(in_channels: int = 3, num_classes: int = 10, drop_rate: float = 0.0) -> WideResNet:  # noqa: N802
    """The Madry/TRADES CIFAR WRN-34-10 (≈46.2M parameters for 10 classes)."""
    return WideResNet(34, 10, in_channels=in_channels, num_classes=num_classes, drop_rate=drop_rate)
