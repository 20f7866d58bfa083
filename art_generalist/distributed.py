"""Data-parallel training with ``torch.distributed`` (``torchrun``; NCCL on GPUs, gloo on CPUs).

When a process group of more than one rank is initialised, ``fit(x, y)`` of every trainer
trains data-parallel, with no change to the user's code beyond launching it under ``torchrun``:

* every rank draws the same epoch permutation (rank 0's RNG state is broadcast to every rank
  when ``fit`` starts), splits it into global batches of ``batch_size`` exactly as one process
  would, and trains on its contiguous ``batch_size / world_size`` slice of each global batch;
* :class:`DataParallel`, attached automatically, averages every learner's gradients (and its
  floating-point buffers, e.g. BatchNorm running statistics) with one all-reduce of one flat
  buffer per learner per step, so the step equals the single-process step on the global batch
  (mean loss over the global batch) for models without BatchNorm; with BatchNorm in train mode
  each rank normalises its own slice ("ghost" batch norm of ``batch_size / world_size``);
* random draws of the augmentation and of the PGD random start are made for the whole global
  batch on every rank and sliced (:func:`art_generalist.global_draws.sharded`), so they do not
  depend on the number of ranks and every rank's RNG stays in step with a single-process run;
* the epoch's loss and accuracy are averaged over the ranks; only rank 0 writes checkpoints,
  shows progress bars and logs; every rank resumes from the same checkpoint.

Set ``ART_GENERALIST_DEBUG_SYNC=1`` (or attach ``DataParallel(debug_sync=True)`` with
:func:`attach` before ``fit``) to compare a hash of every weight and of the RNG state across
ranks after each epoch and raise if they differ. Without an initialised process group (or with
one rank) nothing here runs: single-process training is unchanged.
"""
from __future__ import annotations

import hashlib
import logging
import os
from typing import TYPE_CHECKING, Any, Callable, Optional

import torch
import torch.distributed as dist
from torch import nn

from art_generalist.plugins import Plugin

if TYPE_CHECKING:  # pragma: no cover
    from art_generalist.learners import Learner

logger = logging.getLogger(__name__)

DEBUG_SYNC_ENV_VAR = "ART_GENERALIST_DEBUG_SYNC"


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


def init_from_env(device: str) -> str:
    """Join the process group that ``torchrun`` describes in the environment (``WORLD_SIZE`` > 1):
    NCCL with one GPU per process (``LOCAL_RANK``) when ``device`` is CUDA, gloo otherwise.
    Returns the device this process uses (``device`` itself outside ``torchrun``)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return device
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        device = f"cuda:{torch.cuda.current_device()}"
    dist.init_process_group("nccl" if cuda else "gloo")
    logger.info("rank %d of %d on %s", dist.get_rank(), dist.get_world_size(), device)
    return device


def broadcast_tensor(t: torch.Tensor) -> torch.Tensor:
    """Rank 0's ``t`` on every rank (``t`` itself in one process); bool tensors included."""
    if not active():
        return t
    work = t.to(torch.uint8) if t.dtype == torch.bool else t.clone()
    if dist.get_backend() == "nccl" and not work.is_cuda:
        work = work.cuda()
    dist.broadcast(work, src=0)
    return (work.bool() if t.dtype == torch.bool else work).to(t.device)


def broadcast_module(module: nn.Module) -> None:
    """Give every rank rank 0's parameters and buffers (no-op in one process): for models trained
    outside the package's data-parallel loop (ART's own trainers), before sharded evaluation."""
    if not active():
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            work = t.data if dist.get_backend() != "nccl" or t.is_cuda else t.data.cuda()
            dist.broadcast(work, src=0)
            if work is not t.data:
                t.data.copy_(work)


# -- sharding the global batches of fit(x, y) --------------------------------------------------------
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


# -- the gradient reduction ---------------------------------------------------------------------------
def _digest(tensors: list[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _flat_tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for k in sorted(obj, key=str) for t in _flat_tensors(obj[k])]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _flat_tensors(v)]
    return []


class DataParallel(Plugin):
    """Averages each learner's gradients and floating-point buffers across ranks (one all-reduce
    of one flat buffer per learner per step, per dtype), syncs the RNG when ``fit`` starts, and
    averages the epoch's statistics. Attached by :func:`attach`; never saved in checkpoints.

    :param debug_sync: after each epoch, compare a hash of the trainer's weights and RNG state
        across ranks and raise ``RuntimeError`` if they differ (default: ``$ART_GENERALIST_DEBUG_SYNC``).
    """

    name = "data_parallel"

    def __init__(self, debug_sync: Optional[bool] = None) -> None:
        self.debug_sync = (os.environ.get(DEBUG_SYNC_ENV_VAR, "") not in ("", "0")
                           if debug_sync is None else bool(debug_sync))

    def begin_fit(self, trainer: Any, nb_epochs: int, nb_batches: int, batches: Callable,
                  validation: Any) -> None:
        """Every rank continues from rank 0's RNG state (the same shuffles and random starts)."""
        from art_generalist.state.files import collect_rng_states, set_rng_states  # (state imports this module)

        states = [collect_rng_states()]
        dist.broadcast_object_list(states, src=0)
        set_rng_states(states[0])

    def reduce_gradients(self, learner: "Learner") -> None:
        """Replace each gradient and float buffer by its mean over the ranks."""
        size = world()[1]
        tensors = [p.grad for p in learner.model.parameters() if p.grad is not None]
        tensors += [b for b in learner.model.buffers() if b.is_floating_point()]
        for dtype in sorted({t.dtype for t in tensors}, key=str):
            group = [t for t in tensors if t.dtype == dtype]
            flat = torch.cat([t.reshape(-1) for t in group])
            dist.all_reduce(flat)
            flat.div_(size)
            offset = 0
            for t in group:
                t.copy_(flat[offset:offset + t.numel()].view_as(t))
                offset += t.numel()

    def after_epoch(self, trainer: Any, record: dict) -> None:
        """The epoch's loss and accuracy over all ranks; with ``debug_sync``, the sync check."""
        size, names = world()[1], list(record["learners"])
        local = [record["learners"][k][m] for k in names for m in ("loss", "train_acc")]
        totals = torch.tensor(local, dtype=torch.float64, device=_reduce_device())
        dist.all_reduce(totals)
        for i, value in enumerate((totals / size).tolist()):
            record["learners"][names[i // 2]][("loss", "train_acc")[i % 2]] = value
        record["examples"] = record["examples"] * size
        if self.debug_sync:
            check_in_sync(trainer)


def check_in_sync(trainer: Any) -> None:
    """Raise ``RuntimeError`` unless every rank holds the same weights, optimizer and plug-in
    state and torch RNG state (a SHA-256 of their bytes, gathered from every rank)."""
    tensors = _flat_tensors(trainer._model_state()) + _flat_tensors(trainer.plugins.state_dict())
    digest = _digest(tensors + [torch.get_rng_state()])
    digests: list = [None] * world()[1]
    dist.all_gather_object(digests, digest)
    if len(set(digests)) != 1:
        differ = [r for r, d in enumerate(digests) if d != digests[0]]
        raise RuntimeError(f"The ranks are out of sync after epoch {trainer.progress.epoch + 1}: ranks {differ} "
                           f"hold weights or RNG states that differ from rank 0's.")
    logger.debug("ranks in sync (%s)", digest[:12])


def _sync_batchnorm(models: list[nn.Module]) -> None:
    """Swap the BatchNorm layers of the learners' models for ``SyncBatchNorm`` in place (same
    parameters and buffers, so optimizers and EMAs are unaffected). torch's SyncBatchNorm
    synchronises only train-mode forward passes, so the attacks (eval mode) do not communicate."""
    for model in models:
        if isinstance(model, nn.modules.batchnorm._BatchNorm):
            raise ValueError("sync_batchnorm: the model itself is a BatchNorm layer; wrap it in a module.")
        params = next(iter(model.parameters()), None)
        has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        if has_bn and (params is None or params.device.type != "cuda"):
            raise ValueError("sync_batchnorm needs the model on CUDA: torch's SyncBatchNorm refuses CPU tensors. "
                             "On CPUs each rank normalises its own slice of the global batch (see the README).")
        nn.SyncBatchNorm.convert_sync_batchnorm(model)


def attach(trainer: Any, debug_sync: Optional[bool] = None) -> None:
    """Make ``trainer`` data-parallel when a process group of more than one rank is initialised
    (called by ``fit``; a no-op otherwise, or when it is already attached)."""
    if not active():
        return
    models = [trainer.global_space.model] + [lrn.model for lrn in trainer._learners()]
    if any(isinstance(m, nn.DataParallel) for m in models):
        raise ValueError("The classifier's model is an nn.DataParallel, which cannot be mixed with data-parallel "
                         "training across processes: pass the plain module (`model.module`).")
    if not any(isinstance(p, DataParallel) for p in trainer.plugins.runtime):
        if getattr(getattr(trainer, "runtime", None), "sync_batchnorm", False):
            _sync_batchnorm([lrn.model for lrn in trainer._learners()])
        trainer.plugins.attach(DataParallel(debug_sync))
        rank, size = world()
        if rank != 0:  # the other ranks keep warnings and errors only
            package = logging.getLogger("art_generalist")
            package.setLevel(max(package.getEffectiveLevel(), logging.WARNING))
        logger.info("data-parallel training on %d ranks (backend %s)", size, dist.get_backend())
