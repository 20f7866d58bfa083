"""Data-parallel training with ``torch.distributed`` (``torchrun``; NCCL on GPUs, gloo on CPUs).

When a process group of more than one rank is initialised, ``fit`` of every trainer trains
data-parallel, with no change to the user's code beyond launching it under ``torchrun``:

* when ``fit`` starts (after any resume) every rank takes rank 0's models, optimizers, EMAs,
  plug-in state and RNG states (:func:`broadcast_state`; torch's DistributedDataParallel takes
  rank 0's parameters too), draws the same epoch permutation, splits it into global batches of
  ``batch_size`` as one process would, and trains on its ``batch_size / world_size`` slice of each;
* :class:`DataParallel` averages every learner's gradients and floating-point buffers with one
  all-reduce per learner per step: the step equals the single-process step on the global batch
  without BatchNorm; with BatchNorm in train mode each rank normalises its own slice ("ghost");
* random draws (augmentation, PGD random start) are made for the whole global batch and sliced
  (:func:`art_generalist.parallel.draws.sharded`), so every rank's RNG stays in step with one process;
* the epoch's loss and accuracy are averaged over the ranks; only rank 0 writes checkpoints,
  shows progress bars and logs; every rank resumes from the same checkpoint.

``ART_GENERALIST_DEBUG_SYNC=1`` (or ``DataParallel(debug_sync=True)`` attached with :func:`attach`)
compares a hash of every weight and RNG state across ranks after each epoch and raises if they
differ. ``ART_GENERALIST_COLLECTIVE_TIMEOUT`` (or ``init_from_env(timeout_s=...)``) bounds how long a
collective waits for a stalled rank. With one rank nothing here runs.
"""
from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any, Callable, Optional

import torch
import torch.distributed as dist
from torch import nn

from art_generalist.parallel.ranks import _reduce_device, active, average_gradients, broadcast_state, world
from art_generalist.state.fingerprint import tensor_digest
from art_generalist.train.plugins import Plugin

if TYPE_CHECKING:  # pragma: no cover
    from art_generalist.core.learner import Learner

logger = logging.getLogger(__name__)

DEBUG_SYNC_ENV_VAR = "ART_GENERALIST_DEBUG_SYNC"


# -- the gradient reduction ---------------------------------------------------------------------------
def _flat_tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for k in sorted(obj, key=str) for t in _flat_tensors(obj[k])]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _flat_tensors(v)]
    return []


class DataParallel(Plugin):
    """Gives every rank rank 0's state when ``fit`` starts, averages each learner's gradients and
    floating-point buffers across ranks (one all-reduce of one flat buffer per learner per step,
    per dtype) and the epoch's statistics. Attached by :func:`attach`; never saved in checkpoints.

    :param debug_sync: after each epoch, compare a hash of the trainer's weights and RNG state
        across ranks and raise ``RuntimeError`` if they differ (default: ``$ART_GENERALIST_DEBUG_SYNC``).
    """

    name = "data_parallel"

    def __init__(self, debug_sync: Optional[bool] = None) -> None:
        self.debug_sync = (os.environ.get(DEBUG_SYNC_ENV_VAR, "") not in ("", "0")
                           if debug_sync is None else bool(debug_sync))

    def begin_fit(self, trainer: Any, nb_epochs: int, nb_batches: int, batches: Callable,
                  validation: Any) -> None:
        """Every rank continues from rank 0's state (after a resume, if any): every model, optimizer
        and EMA (``trainer.model_state()``), the plug-ins' state and the RNG states. Models load in
        place, so the optimizers keep their parameters."""
        from art_generalist.state.files import collect_rng_states, set_rng_states  # (state imports this module)

        mine = {"models": trainer.model_state(), "plugins": trainer.plugins.state_dict(),
                "rng": collect_rng_states()} if world()[0] == 0 else None
        state = broadcast_state(mine)
        if state is not mine:
            trainer.load_model_state(state["models"])
            trainer.plugins.load_state_dict(state["plugins"])
            set_rng_states(state["rng"])

    def reduce_gradients(self, learner: "Learner") -> None:
        """Replace each gradient and float buffer by its mean over the ranks."""
        average_gradients(learner.model)

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
    tensors = _flat_tensors(trainer.model_state()) + _flat_tensors(trainer.plugins.state_dict())
    digest = tensor_digest(*tensors, torch.get_rng_state())
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
    models = [trainer.global_space.model] + [lrn.model for lrn in trainer.base_learners()]
    if any(isinstance(m, nn.DataParallel) for m in models):
        raise ValueError("The classifier's model is an nn.DataParallel, which cannot be mixed with data-parallel "
                         "training across processes: pass the plain module (`model.module`).")
    if not any(isinstance(p, DataParallel) for p in trainer.plugins.runtime):
        if getattr(getattr(trainer, "runtime", None), "sync_batchnorm", False):
            _sync_batchnorm([lrn.model for lrn in trainer.base_learners()])
        trainer.plugins.attach(DataParallel(debug_sync))
        rank, size = world()
        if rank != 0:  # the other ranks keep warnings and errors only
            package = logging.getLogger("art_generalist")
            package.setLevel(max(package.getEffectiveLevel(), logging.WARNING))
        logger.info("data-parallel training on %d ranks (backend %s)", size, dist.get_backend())
