"""Robust Bird (Chen et al., "Sparsity Winning Twice", ICLR 2022): static sparse adversarial
training from an early-bird ticket, as a plug-in for every trainer of the package.

At the start of ``fit``, when no ticket exists yet, the plug-in runs **stage 1** itself:

1. dense **natural** training (cross-entropy on the clean batches) of the trainer's shipped model
   (Generalist's global learner, the single learner's model), with a fresh optimizer cloned from
   the primary learner's at its base learning rate, on the same batches the trainer trains on;
2. after every epoch, a global magnitude mask over all Conv2d weights at the target density (over
   Conv2d and Linear weights for a model without convolutions); when the newest mask is within
   normalised Hamming distance ``threshold`` (0.08) of each of the previous ``window - 1`` masks
   (5 masks), the early-bird ticket has emerged and the search stops (or after
   ``max_search_epochs``, by default the fit's epoch budget, as the official ``epochs1 = 200``);
3. global magnitude pruning of the Conv2d **and** Linear weights to the density, with **no
   rewinding**: the ticket's weights (and buffers) are copied into every model (learners,
   teachers, global) and the learners' optimizer state is reset.

Then the trainer's adversarial fit (**stage 2**) proceeds with the mask fixed. The constant stage-1
learning rate matches the official run, whose search ends long before its first decay. Stage-1
epochs, examples, seconds and FLOPs are recorded (in checkpoints, exports and
``trainer.sparsity_report()``) and count in the training FLOPs. A run resumed from a stage-2
checkpoint does not search again. Stage 1 calls no plug-in hook; under ``torch.distributed`` it
averages its own gradients across the ranks (each trains on its slice of the global batches, as in
stage 2), follows rank 0's stop decision and ends with rank 0's weights, so every rank installs
the same ticket (its examples and FLOPs count every rank's).

Unstructured sparsity saves FLOPs, not wall-clock time on dense kernels (see
:mod:`~art_generalist.sparse.report`).
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterator, Optional

from torch import nn

from art_generalist.core.objectives import NaturalCE
from art_generalist.estimators import clone_optimizer
from art_generalist.parallel import ranks
from art_generalist.sparse.masks import Masks
from art_generalist.sparse.plugin import SparsityPlugin
from art_generalist.sparse.topology import early_bird_emerged
from art_generalist.train.plugins import Batch

logger = logging.getLogger(__name__)


def _new_stage1() -> dict:
    return {"epochs": 0, "emerged": False, "examples": 0, "train_flops": 0.0, "seconds": 0.0, "distances": []}


class RobustBird(SparsityPlugin):
    """Robust Bird: early-bird search by dense natural training, then adversarial training of the
    pruned network with a fixed mask (see the module docstring).

    :param density: fraction of the Conv2d/Linear weights kept, in (0, 1] (0.2 = 80 % sparse).
    :param threshold: the early-bird normalised Hamming distance, in [0, 1] (0.08).
    :param window: the number of consecutive masks compared, >= 2 (5).
    :param max_search_epochs: the most stage-1 epochs; ``None`` takes the fit's ``nb_epochs``.
    """

    method = "Robust Bird"

    def __init__(self, density: float = 0.2, threshold: float = 0.08, window: int = 5,
                 max_search_epochs: Optional[int] = None) -> None:
        super().__init__(density, seed=0)
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
            raise ValueError(f"`threshold` must be a number in [0, 1], got {threshold!r}.")
        if isinstance(window, bool) or not isinstance(window, int) or window < 2:
            raise ValueError(f"`window` must be an integer >= 2, got {window!r}.")
        if max_search_epochs is not None and (isinstance(max_search_epochs, bool)
                                              or not isinstance(max_search_epochs, int) or max_search_epochs < 1):
            raise ValueError(f"`max_search_epochs` must be None or an integer >= 1, got {max_search_epochs!r}.")
        self.threshold, self.window, self.max_search_epochs = float(threshold), window, max_search_epochs
        self.stage1 = _new_stage1()

    def settings(self) -> dict:
        return {"density": self.density, "threshold": self.threshold, "window": self.window,
                "max_search_epochs": self.max_search_epochs}

    def _stage1(self) -> Optional[dict]:
        return {**self.stage1, "distances": list(self.stage1["distances"])} if self.stage1["epochs"] else None

    def begin_fit(self, trainer: Any, nb_epochs: int, nb_batches: int, batches: Callable[[], Iterator[Batch]],
                  validation: Optional[Batch]) -> None:
        super().begin_fit(trainer, nb_epochs, nb_batches, batches, validation)
        if self.masks is None:
            self.search(trainer, batches, self.max_search_epochs or nb_epochs)

    def search(self, trainer: Any, batches: Callable[[], Iterator[Batch]], max_epochs: int) -> Masks:
        """Stage 1 on ``trainer``'s shipped model, then the ticket installed in every model."""
        space = trainer.global_space
        model = space.model
        optimizer = clone_optimizer(self.primary.optimizer, model, [p for p in model.parameters() if p.requires_grad])
        for group in optimizer.param_groups:
            group["lr"] = self.primary.base_lrs[0]
        objective = NaturalCE()
        layers = "conv" if any(isinstance(m, nn.Conv2d) for m in model.modules()) else "conv+linear"
        per_example = self.flops.natural_training(sparse=False)
        recent: list[Masks] = []
        was_training = model.training
        self.stage1 = _new_stage1()
        try:
            for epoch in range(1, max_epochs + 1):
                start, seen = time.perf_counter(), 0
                space.train()
                for u, y in batches():
                    loss = objective(space, u, y).loss
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    ranks.average_gradients(model)  # the step on the global batch
                    optimizer.step()
                    seen += len(y) * ranks.world()[1]
                recent = [*recent, Masks.global_magnitude(model, self.density, layers=layers)][-self.window:]
                distance = (max(recent[-1].hamming(old) for old in recent[:-1]) if len(recent) == self.window
                            else None)
                # rank 0's stop decision and distance on every rank
                emerged, distance = ranks.broadcast_state((early_bird_emerged(recent, self.threshold, self.window),
                                                           distance))
                s = self.stage1
                s["epochs"], s["examples"] = s["epochs"] + 1, s["examples"] + seen
                s["train_flops"] += seen * per_example
                s["seconds"] += time.perf_counter() - start
                s["distances"].append(distance)
                logger.info("Robust Bird stage 1, epoch %d/%d: largest Hamming distance to the last %d masks %s",
                            epoch, max_epochs, self.window - 1, "n/a" if distance is None else f"{distance:.4f}")
                if emerged:
                    s["emerged"] = True
                    break
        finally:
            space.train(was_training)
            model.zero_grad(set_to_none=True)
        ranks.broadcast_module(model)  # every rank prunes and installs rank 0's weights
        ticket = Masks.global_magnitude(model, self.density, layers="conv+linear")
        state = model.state_dict()
        for other in self._models:
            if other is not model:
                other.load_state_dict(state)
        for lrn in self._learners:
            lrn.optimizer.state.clear()
        self.install(ticket)
        logger.info("Robust Bird: %s after %d epochs; ticket density %.4f", "early bird emerged" if
                    self.stage1["emerged"] else "no early bird (search budget spent)", self.stage1["epochs"],
                    ticket.density())
        return ticket

    def state_dict(self) -> dict:
        return {**super().state_dict(), "stage1": {**self.stage1, "distances": list(self.stage1["distances"])}}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        saved = state["stage1"]
        self.stage1 = {**saved, "distances": list(saved["distances"])}
