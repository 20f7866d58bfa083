"""Random draws that do not depend on the number of ranks.

Under data-parallel ``fit(x, y)`` (:mod:`art_generalist.train.data_parallel`) each rank trains on a
contiguous slice of every global batch. :func:`sharded` runs the augmentation and the training
attack so that each of their random ops whose first dimension is the slice (the PGD random start,
the random crops and flips) draws for the whole global batch, consuming the RNG exactly as one
process does, and keeps the slice: each example gets the noise it would get in a single process,
and every rank's RNG stays in step. Ops are matched by their first dimension only: a random op
of another shape, or one inside a model's forward pass (dropout), is drawn per rank.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch.overrides import TorchFunctionMode

from art_generalist.parallel.ranks import world


@dataclass(frozen=True)
class Shard:
    """This rank's slice ``[start, stop)`` of a global batch of ``size`` examples."""

    size: int
    start: int
    stop: int


_current: Optional[Shard] = None


def take_shard(idx: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous slice of the global batch ``idx`` (``idx`` itself in one process);
    records the slice for :func:`sharded`."""
    global _current
    rank, size = world()
    if size == 1:
        return idx
    local = len(idx) // size
    _current = Shard(len(idx), rank * local, (rank + 1) * local)
    return idx[_current.start:_current.stop]


def local_batch(n: int) -> None:
    """Record this rank's local batch of ``n`` examples (a ``DistributedSampler``'s batch) as
    slice ``rank`` of a global batch of ``n * world_size``: every rank then consumes the RNG as one
    process on the global batch would, and draws its own examples' noise (no-op in one process)."""
    global _current
    rank, size = world()
    if size > 1:
        _current = Shard(n * size, rank * n, (rank + 1) * n)


def clear_shard() -> None:
    """Forget the current slice (the epoch is over)."""
    global _current
    _current = None


_IN_PLACE = {torch.Tensor.uniform_, torch.Tensor.normal_, torch.Tensor.bernoulli_, torch.Tensor.random_,
             torch.Tensor.exponential_, torch.Tensor.cauchy_, torch.Tensor.log_normal_, torch.Tensor.geometric_}
_LIKE = {torch.rand_like, torch.randn_like, torch.randint_like}
_SIZED = {torch.rand, torch.randn, torch.randint}


class _GlobalDraws(TorchFunctionMode):
    """Random ops whose first dimension is this rank's slice draw for the whole global batch
    (consuming the RNG as one process would) and keep the slice."""

    def __init__(self, shard: Shard) -> None:
        super().__init__()
        self.shard, self.local = shard, shard.stop - shard.start

    def _cut(self, full: torch.Tensor) -> torch.Tensor:
        return full[self.shard.start:self.shard.stop]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _IN_PLACE and args[0].dim() > 0 and args[0].shape[0] == self.local:
            full = args[0].new_empty((self.shard.size, *args[0].shape[1:]))
            func(full, *args[1:], **kwargs)
            with torch.no_grad():
                return args[0].copy_(self._cut(full))
        if func in _LIKE and args[0].dim() > 0 and args[0].shape[0] == self.local:
            template = args[0].new_empty((self.shard.size, *args[0].shape[1:]))
            return self._cut(func(template, *args[1:], **kwargs)).clone()
        if func in _SIZED:
            args, kwargs, resized = self._global_size(func, list(args), dict(kwargs))
            if resized:
                return self._cut(func(*args, **kwargs)).clone()
        return func(*args, **kwargs)

    def _global_size(self, func, args: list, kwargs: dict) -> tuple[list, dict, bool]:
        """``args``/``kwargs`` with the size's first dimension widened to the global batch."""
        if "size" in kwargs:
            size = list(kwargs["size"])
            if size and size[0] == self.local:
                kwargs["size"] = (self.shard.size, *size[1:])
                return args, kwargs, True
            return args, kwargs, False
        if func is torch.randint:  # randint(high, size) or randint(low, high, size)
            if args and isinstance(args[-1], (tuple, list, torch.Size)) and args[-1] and args[-1][0] == self.local:
                args[-1] = (self.shard.size, *args[-1][1:])
                return args, kwargs, True
            return args, kwargs, False
        if len(args) == 1 and isinstance(args[0], (tuple, list, torch.Size)):
            if args[0] and args[0][0] == self.local:
                return [(self.shard.size, *args[0][1:])], kwargs, True
        elif args and isinstance(args[0], int) and args[0] == self.local:
            args[0] = self.shard.size
            return args, kwargs, True
        return args, kwargs, False


def sharded(fn: Callable) -> Callable:
    """``fn`` whose random draws for this rank's slice are taken from global-batch draws (``fn``
    itself when no global batch is being split: single process, validation, evaluation)."""
    shard = _current
    if shard is None:
        return fn

    def call(*args: Any, **kwargs: Any) -> Any:
        with _GlobalDraws(shard):
            return fn(*args, **kwargs)
    return call
