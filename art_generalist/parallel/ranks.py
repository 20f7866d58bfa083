"""The process group and its collectives, for :mod:`art_generalist.train.data_parallel` and the modules
that train or evaluate across ranks: who this rank is, joining ``torchrun``'s group (with a
timeout for stalled ranks), broadcasting rank 0's tensors, modules and whole state dicts, and
averaging gradients. Every function is a no-op (or returns its argument) in one process.
"""
from __future__ import annotations

import copy
import datetime
import logging
import math
import os
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
from torch import nn

logger = logging.getLogger(__name__)

TIMEOUT_ENV_VAR = "ART_GENERALIST_COLLECTIVE_TIMEOUT"


def world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def active() -> bool:
    """Whether training is data-parallel: a process group of more than one rank is initialised."""
    return world()[1] > 1


def is_main_process() -> bool:
    """Rank 0, or the only process: the one that writes checkpoints, bars and logs."""
    return world()[0] == 0


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if active():
        dist.barrier()


def _reduce_device() -> torch.device:
    """Where small collective tensors live: the current CUDA device under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def collective_timeout(timeout_s: Optional[float] = None) -> Optional[datetime.timedelta]:
    """``timeout_s`` seconds, else ``$ART_GENERALIST_COLLECTIVE_TIMEOUT``, as a timedelta (``None``
    when neither is set: torch's default); non-positive or non-finite values are refused."""
    name, raw = "timeout_s (--collective-timeout)", os.environ.get(TIMEOUT_ENV_VAR, "").strip()
    if timeout_s is None and not raw:
        return None
    if timeout_s is None:
        name, timeout_s = f"${TIMEOUT_ENV_VAR}", raw
        try:
            timeout_s = float(raw)
        except ValueError:
            pass  # refused below
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not 0 < timeout_s < math.inf:
        raise ValueError(f"{name}, the collective timeout, must be a positive number of seconds, got {timeout_s!r}.")
    return datetime.timedelta(seconds=float(timeout_s))


def init_from_env(device: str, timeout_s: Optional[float] = None) -> str:
    """Join the process group that ``torchrun`` describes in the environment (``WORLD_SIZE`` > 1):
    NCCL with one GPU per process (``LOCAL_RANK``) when ``device`` is CUDA, gloo otherwise.
    A collective that waits longer than ``timeout_s`` seconds (default
    ``$ART_GENERALIST_COLLECTIVE_TIMEOUT``, else torch's) raises instead of waiting forever for a
    stalled rank. Returns the device this process uses (``device`` itself outside ``torchrun``)."""
    timeout = collective_timeout(timeout_s)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return device
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        device = f"cuda:{torch.cuda.current_device()}"
    dist.init_process_group("nccl" if cuda else "gloo", **({} if timeout is None else {"timeout": timeout}))
    logger.info("rank %d of %d on %s (collective timeout %s)", dist.get_rank(), dist.get_world_size(), device,
                "torch's default" if timeout is None else timeout)
    return device


def broadcast_module(module: nn.Module) -> None:
    """Give every rank rank 0's parameters and buffers, in place (no-op in one process): for models
    trained outside the package's data-parallel loop (ART's own trainers, Robust Bird's search)."""
    if active():
        with torch.no_grad():
            tensors = list(module.parameters()) + list(module.buffers())
            for t, got in zip(tensors, broadcast_state(tensors)):
                if got is not t:
                    t.copy_(got)


class _Slot(int):
    """Where a tensor stood in the structure :func:`broadcast_state` sends."""


def _map(obj: Any, leaf: Callable[[Any], Any]) -> Any:
    """``obj`` with ``leaf`` applied to everything but dicts, lists and tuples (dicts keep their
    type and attributes, e.g. the ``_metadata`` of a ``state_dict``)."""
    if isinstance(obj, dict):
        out = copy.copy(obj)
        for k in out:
            out[k] = _map(obj[k], leaf)
        return out
    if type(obj) in (list, tuple):
        return type(obj)(_map(v, leaf) for v in obj)
    return leaf(obj)


def broadcast_state(obj: Any) -> Any:
    """Rank 0's ``obj`` (nested dicts, lists and tuples of tensors and plain values; ignored on the
    other ranks) on every rank: its structure in one object broadcast, its tensors in one flat
    buffer per dtype, each landing on this rank's device of the kind rank 0's was on. Rank 0 gets
    ``obj`` itself, the others new tensors; ``obj`` in one process."""
    if not active():
        return obj
    rank, wire_device, tensors = world()[0], _reduce_device(), []
    skeleton = _map(obj, lambda v: (tensors.append(v), _Slot(len(tensors) - 1))[1]
                    if isinstance(v, torch.Tensor) else v) if rank == 0 else None
    sent = [skeleton, [(t.dtype, t.shape, t.device.type) for t in tensors]]
    dist.broadcast_object_list(sent, src=0)
    skeleton, meta = sent
    got: list = [None] * len(meta)
    for dtype in sorted({m[0] for m in meta}, key=str):
        index = [i for i, m in enumerate(meta) if m[0] == dtype]
        wire, sizes = torch.uint8 if dtype == torch.bool else dtype, [meta[i][1].numel() for i in index]
        flat = (torch.cat([tensors[i].detach().reshape(-1).to(wire_device, wire) for i in index]) if rank == 0
                else torch.empty(sum(sizes), dtype=wire, device=wire_device))
        if len(flat):
            dist.broadcast(flat, src=0)
        for i, part in zip(index, flat.split(sizes)):
            to = torch.device("cuda", torch.cuda.current_device()) if meta[i][2] == "cuda" else torch.device("cpu")
            got[i] = part.view(meta[i][1]).to(to, dtype, copy=True)  # its own storage (set_rng_state needs it)
    return obj if rank == 0 else _map(skeleton, lambda v: got[v] if isinstance(v, _Slot) else v)


def average_gradients(model: nn.Module) -> None:
    """Replace each gradient and floating-point buffer of ``model`` by its mean over the ranks (one
    all-reduce of one flat buffer per dtype); a no-op in one process."""
    if not active():
        return
    size = world()[1]
    tensors = [p.grad for p in model.parameters() if p.grad is not None]
    tensors += [b for b in model.buffers() if b.is_floating_point()]
    for dtype in sorted({t.dtype for t in tensors}, key=str):
        group = [t for t in tensors if t.dtype == dtype]
        flat = torch.cat([t.reshape(-1) for t in group])
        dist.all_reduce(flat)
        flat.div_(size)
        for t, part in zip(group, flat.split([t.numel() for t in group])):
            t.copy_(part.view_as(t))


# -- what data-parallel fit(x, y) and fit_loader need of every rank ------------------------------------
def check_arrays(n: int, batch_size: int, nb_batches: int, shuffle: bool) -> None:
    """Refuse what data-parallel ``fit(x, y)`` cannot split evenly, or ranks that disagree.

    Every global batch (the last one included) must divide by the world size, and every rank
    must pass the same number of examples, ``batch_size`` and ``shuffle``.
    """
    if not active():
        return
    rank, size = world()
    mine = torch.tensor([n, batch_size, nb_batches, int(shuffle)], dtype=torch.long, device=_reduce_device())
    low, high = mine.clone(), mine.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    if not torch.equal(low, high):
        raise ValueError(f"Every rank must call fit with the same data length, `batch_size` and `shuffle`; rank "
                         f"{rank} has len(x)={n}, batch_size={batch_size}, shuffle={shuffle}, and the ranks range "
                         f"over {low.tolist()[:2]}..{high.tolist()[:2]} (len(x), batch_size).")
    if batch_size % size:
        raise ValueError(f"`batch_size`={batch_size} (the global batch) does not divide by the world size {size}: "
                         f"pass a multiple of {size}.")
    last = min(batch_size, n - (nb_batches - 1) * batch_size)
    if last % size:
        raise ValueError(f"The last global batch holds {last} of the {n} examples, which does not divide by the "
                         f"world size {size}: pass drop_last=True, or a `batch_size` or data length that leaves a "
                         f"multiple of {size}.")


def check_loader(nb_batches: int, distributed_sampler: bool) -> None:
    """Refuse loaders whose number of batches differs across ranks (a rank would wait forever for
    the others' gradients); warn when the loader has no ``DistributedSampler`` (every rank would
    train on the same examples)."""
    rank, _ = world()
    mine = torch.tensor([nb_batches], dtype=torch.long, device=_reduce_device())
    low, high = mine.clone(), mine.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    if low.item() != high.item():
        raise ValueError(f"Every rank's loader must yield the same number of batches; rank {rank} yields "
                         f"{nb_batches} and the ranks range over {low.item()}..{high.item()}: use a "
                         f"DistributedSampler (which pads every rank to the same length) with the same batch_size.")
    if not distributed_sampler and rank == 0:
        logger.warning("fit_loader under torch.distributed with a loader whose sampler has no set_epoch: unless "
                       "the dataset shards itself, every rank trains on the same examples. Pass "
                       "sampler=torch.utils.data.DistributedSampler(dataset).")


