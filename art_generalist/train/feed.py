"""Batches for the training loop: each entry point of a trainer (arrays, an ART
``DataGenerator``, a torch ``DataLoader``) becomes a function that yields one epoch of
``(u, y)`` batches, unit-range inputs and index labels on the device."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Optional

import torch

from art_generalist.core.attack import ThreatModel, TrainingAttack
from art_generalist.parallel import draws, ranks
from art_generalist.parallel.draws import clear_shard, local_batch, take_shard

if TYPE_CHECKING:  # pragma: no cover
    from art.data_generators import DataGenerator

    from art_generalist.core.attack import InputSpace

Batch = tuple[torch.Tensor, torch.Tensor]
Batches = Callable[[], Iterator[Batch]]


def sharded_attack(space: "InputSpace", norm: "str | float | ThreatModel", eps: float, eps_step: float,
                   max_iter: int, loss: str = "ce") -> TrainingAttack:
    """The training PGD of every trainer: its random starts are drawn for the whole global batch
    and cut to the shard this process feeds, so data-parallel ranks draw what one process would."""
    return TrainingAttack(space, norm, eps, eps_step, max_iter, loss=loss, draws=draws.sharded)


def nb_array_batches(n: int, batch_size: int, drop_last: bool) -> int:
    nb = n // batch_size if drop_last else math.ceil(n / batch_size)
    if nb == 0:
        raise ValueError(f"`batch_size`={batch_size} with drop_last leaves no batch for {n} examples.")
    return nb


def array_batches(u: torch.Tensor, y: torch.Tensor, batch_size: int, nb_batches: int, shuffle: bool) -> Batches:
    """Epochs over device tensors: one ``randperm`` on the data's device per epoch. Under
    ``torch.distributed`` each rank takes its slice of every global batch
    (:func:`~art_generalist.parallel.draws.take_shard`)."""
    ranks.check_arrays(len(u), batch_size, nb_batches, shuffle)

    def batches() -> Iterator[Batch]:
        order = torch.randperm(len(u), device=u.device) if shuffle else torch.arange(len(u), device=u.device)
        try:
            for idx in order.split(batch_size)[:nb_batches]:
                idx = take_shard(idx)
                yield u[idx], y[idx]
        finally:
            clear_shard()
    return batches


def generator_batches(generator: "DataGenerator", nb_batches: int, convert: Callable[..., Batch]) -> Batches:
    """Epochs over an ART ``DataGenerator`` (numpy batches, checked and converted one at a time)."""
    def batches() -> Iterator[Batch]:
        for _ in range(nb_batches):
            yield convert(*generator.get_batch())
    return batches


def _sampler(loader: Iterable) -> object:
    sampler = getattr(loader, "sampler", None)
    batch_sampler = getattr(loader, "batch_sampler", None)
    if not hasattr(sampler, "set_epoch") and hasattr(getattr(batch_sampler, "sampler", None), "set_epoch"):
        sampler = batch_sampler.sampler
    return sampler


def loader_batches(loader: Iterable, space: "InputSpace", device: torch.device, nb_classes: int,
                   epoch: Callable[[], int], check: Optional[Callable[[torch.Tensor, torch.Tensor], None]] = None
                   ) -> Batches:
    """Epochs over a torch ``DataLoader`` of ``(x, y)`` in input units (one-hot labels accepted).

    A sampler with ``set_epoch`` (``DistributedSampler``) is told the zero-based epoch ``epoch()``
    before each epoch, so shuffles differ between epochs and a resumed run gets the epochs it
    missed. Under ``torch.distributed`` each rank's loader yields its own batches (give it a
    ``DistributedSampler``); every rank must yield the same number of batches of the same sizes,
    and each local batch draws its random starts and augmentation as its slice of the global batch
    (:func:`~art_generalist.parallel.draws.local_batch`).
    """
    sampler = _sampler(loader)
    if ranks.active():
        ranks.check_loader(len(loader), hasattr(sampler, "set_epoch"))

    def batches() -> Iterator[Batch]:
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch())
        try:
            for xb, yb in loader:
                if check is not None:  # fit's checks, where the loader made the batch (no device sync for CPU batches)
                    check(xb, yb)
                xb = xb.to(device, torch.float32, non_blocking=True)
                yb = yb.to(device, non_blocking=True)
                if yb.dim() == 2 and yb.shape[1] == nb_classes:
                    yb = yb.argmax(1)
                local_batch(len(xb))
                yield space.to_unit(xb), yb.reshape(-1).long()
        finally:
            clear_shard()
    return batches
