"""Attack batches shared out across ranks, results gathered on every rank.

Under ``torch.distributed`` (:mod:`art_generalist.train.data_parallel`) evaluation and validation split
the *attack batches* of the single-process run across the ranks (batch ``k`` on rank
``k mod world_size``) and gather the per-example results. The batches are exactly those of one
process, and every rank still consumes the random draws of the batches it skips, so each point
gets the random start it gets in one process and the gathered report equals the single-process
report bit for bit (timings and the count of forward calls aside: each rank counts its own). In
one process :func:`owns` is always true and
:func:`gather` returns its argument: nothing changes.

:func:`gather` sums over the ranks a tensor that only the owner of each entry filled (the other
ranks leave zeros there). ``x + 0 = x`` exactly in floating point, so the gathered values are the
owner's bits; per-batch partial sums are gathered as rows and added up afterwards in batch order,
as one process adds them.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.distributed as dist

from art_generalist.parallel import ranks

__all__ = ["owns", "gather", "batch_starts", "local_only"]

_local_only = False


@contextlib.contextmanager
def local_only() -> Iterator[None]:
    """Evaluate on this rank alone, whatever the process group: inside the block every attack
    batch runs here and nothing is gathered. For code that evaluates on rank 0 only
    (``if rank == 0: evaluate(...)``), which would otherwise wait for the other ranks forever."""
    global _local_only
    previous, _local_only = _local_only, True
    try:
        yield
    finally:
        _local_only = previous


def _sharding() -> bool:
    return ranks.active() and not _local_only


def owns(batch: int) -> bool:
    """Whether this rank runs attack batch number ``batch`` (always, in one process)."""
    if not _sharding():
        return True
    rank, size = ranks.world()
    return batch % size == rank


def batch_starts(n: int, batch_size: int) -> range:
    """The first index of each batch of ``n`` points in batches of ``batch_size``."""
    return range(0, n, batch_size)


def gather(t: torch.Tensor) -> torch.Tensor:
    """Every rank's entries of ``t`` (zeros where another rank owns them) merged on every rank."""
    if not _sharding():
        return t
    device = t.device
    if dist.get_backend() == "nccl" and device.type != "cuda":
        t = t.to(torch.device("cuda", torch.cuda.current_device()))
    merged = t.to(torch.uint8) if t.dtype == torch.bool else t.clone()
    dist.all_reduce(merged)
    return (merged.bool() if t.dtype == torch.bool else merged).to(device)
