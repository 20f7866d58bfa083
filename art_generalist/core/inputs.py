"""Checks and conversion at the edge: user arrays in, device tensors out (once)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch


def _as_tensor(a: Any, name: str) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a.detach()
    try:
        return torch.as_tensor(np.asarray(a))
    except (TypeError, ValueError) as err:
        raise TypeError(f"`{name}` must be a numpy array or a torch tensor, got {type(a).__name__}.") from err


def check_x(x: Any, input_shape: Sequence[int], clip_values: tuple[float, float], name: str = "x") -> torch.Tensor:
    """``x`` as a float32 tensor (not on the device yet), after shape, finiteness and range checks.

    The caller's array is never modified: later conversions allocate new tensors.
    """
    t = _as_tensor(x, name)
    if t.dim() < 1 or len(t) == 0:
        raise ValueError(f"`{name}` is empty (shape {tuple(t.shape)}); at least one example is needed.")
    if tuple(t.shape[1:]) != tuple(input_shape):
        raise ValueError(f"`{name}` has example shape {tuple(t.shape[1:])}, but the classifier's "
                         f"input_shape is {tuple(input_shape)}.")
    t = t.to(torch.float32)
    if not torch.isfinite(t).all():
        raise ValueError(f"`{name}` contains NaN or inf values.")
    lo, hi = clip_values
    tol = 1e-6 * max(1.0, hi - lo)
    t_min, t_max = t.min().item(), t.max().item()
    if t_min < lo - tol or t_max > hi + tol:
        raise ValueError(f"`{name}` lies in [{t_min:g}, {t_max:g}], outside the classifier's clip_values "
                         f"({lo:g}, {hi:g}); rescale the data (0-255 images need x / 255 for (0, 1)).")
    return t


def check_y(y: Any, n: int, nb_classes: int, name: str = "y") -> torch.Tensor:
    """Index labels (int64) from index labels (n,) / (n, 1) or one-hot labels (n, nb_classes)."""
    t = _as_tensor(y, name)
    if len(t) != n:
        raise ValueError(f"`{name}` has {len(t)} labels for {n} examples.")
    if t.dim() == 2 and t.shape[1] == 1:
        t = t[:, 0]
    if t.dim() == 2:
        if t.shape[1] != nb_classes:
            raise ValueError(f"One-hot `{name}` must have {nb_classes} columns, got shape {tuple(t.shape)}.")
        ones, zeros = (t == 1).sum(1), (t == 0).sum(1)
        if not bool(((ones == 1) & (ones + zeros == nb_classes)).all()):
            raise ValueError(f"Malformed one-hot `{name}`: every row must hold a single 1 and zeros elsewhere.")
        return t.argmax(1).to(torch.int64)
    if t.dim() != 1:
        raise ValueError(f"`{name}` must have shape (n,), (n, 1) or (n, {nb_classes}), got {tuple(t.shape)}.")
    if t.is_floating_point():
        if not bool((t == t.round()).all()):
            raise ValueError(f"Index labels `{name}` must be integers, got non-integral values.")
    elif t.dtype == torch.bool:
        raise ValueError(f"`{name}` must hold integer class indices, got booleans.")
    t = t.to(torch.int64)
    lo, hi = int(t.min()), int(t.max())
    if lo < 0 or hi >= nb_classes:
        raise ValueError(f"Labels `{name}` must lie in [0, {nb_classes}), got values in [{lo}, {hi}].")
    return t


def check_batch(x: torch.Tensor, y: torch.Tensor, input_shape: Sequence[int], clip_values: tuple[float, float],
                nb_classes: int, name: str = "the loader's batch") -> None:
    """:func:`check_x` and :func:`check_y` for one batch, run where the batch lies (a loader's CPU
    batch costs no device synchronisation) with one read of the combined result; only a failing
    batch is examined again for the message."""
    one_hot_width = y.shape[1] if y.dim() == 2 and y.shape[1] != 1 else nb_classes
    if tuple(x.shape[1:]) != tuple(input_shape) or len(x) != len(y) or len(x) == 0 or one_hot_width != nb_classes:
        check_x(x, input_shape, clip_values, f"x of {name}")
        check_y(y, len(x), nb_classes, f"y of {name}")
    lo, hi = clip_values
    tol = 1e-6 * max(1.0, hi - lo)
    xf = x.detach().float()
    bad = ~torch.isfinite(xf).all() | (xf.amin() < lo - tol) | (xf.amax() > hi + tol)
    labels = y.detach()
    if labels.dim() == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.dim() == 2:
        bad = bad | ~((labels == 1).sum(1) == 1).all() | ~((labels == 0) | (labels == 1)).all()
    elif labels.dim() != 1 or labels.dtype == torch.bool:
        bad = bad | True
    else:
        if labels.is_floating_point():
            bad = bad | ~(labels == labels.round()).all()
        bad = bad | (labels.amin() < 0) | (labels.amax() >= nb_classes)
    if bool(bad):
        check_x(x.cpu(), input_shape, clip_values, f"x of {name}")
        check_y(y.cpu(), len(x), nb_classes, f"y of {name}")
