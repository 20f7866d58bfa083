"""Tensor-native data augmentation for unit-range image batches (no PIL, no host round trip)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop_flip(u: torch.Tensor, padding: int = 4, flip: bool = True) -> torch.Tensor:
    """RandomCrop(size, padding) + RandomHorizontalFlip, per example, on an (N, C, H, W) batch.

    The CIFAR augmentation of the official Generalist code, done with one gather on the device.
    """
    n, c, h, w = u.shape
    padded = F.pad(u, (padding, padding, padding, padding))
    di = torch.randint(0, 2 * padding + 1, (n, 1), device=u.device)
    dj = torch.randint(0, 2 * padding + 1, (n, 1), device=u.device)
    rows = (di + torch.arange(h, device=u.device))[:, None, :, None]
    cols = (dj + torch.arange(w, device=u.device))[:, None, None, :]
    out = padded[torch.arange(n, device=u.device)[:, None, None, None],
                 torch.arange(c, device=u.device)[None, :, None, None], rows, cols]
    if flip:
        mirror = torch.rand(n, device=u.device) < 0.5
        out = torch.where(mirror[:, None, None, None], out.flip(3), out)
    return out
