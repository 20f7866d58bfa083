"""The Generalist algorithm (Wang & Wang, "Generalist: Decoupling Natural and Robust
Generalization", CVPR 2023), as the official code (PKU-ML/Generalist ``main.py``) runs it.

Per minibatch (x, y):

1. each robust base learner θ_R makes PGD examples against itself (eval mode) and takes one
   optimizer step on them; its EMA teacher T_R follows;
2. each natural base learner θ_N takes one step on the clean batch; its teacher T_N follows;
3. the global learner mixes the teachers: G <- d·G + (1-d)·(β·T_R + (1-β)·T_N);
4. during distribution windows (from t' on, every c epochs, one epoch long in the official
   run) G is copied back into every base learner after each iteration (optimizer state kept).

β(e) is piecewise linear over the epoch budget, (0, E/3, 2E/3, E) -> (1, 1, 1, 0.4). Every EMA
uses the decay ``min(0.999, (t+1)/(t+10))``. The global learner G is the model users ship.
This module is tensor-native: batches arrive as unit-range tensors on the model's device.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import torch

from art_generalist.core.learner import EpochStats, Learner
from art_generalist.core.mixing import ModelEMA
from art_generalist.core.schedules import fractional_epoch

if TYPE_CHECKING:  # pragma: no cover
    from art_generalist.train.options import GeneralistConfig

logger = logging.getLogger(__name__)

MixWeights = Callable[[float, int], Sequence[float]]


class Generalist:
    """The engine: base learners, their teachers, the global learner and the schedules.

    :param learners: the base learners, stepped in order each iteration (robust first, as
        the official code does).
    :param global_ema: the global learner G, an EMA over the mixture of the teachers.
    :param config: the :class:`~art_generalist.train.options.GeneralistConfig` (β or mixing weights,
        distribution windows, learning-rate sharing, when schedules are read).
    """

    def __init__(self, learners: Sequence[Learner], global_ema: ModelEMA, config: "GeneralistConfig") -> None:
        if len(learners) < 2:
            raise ValueError(f"Generalist needs at least 2 base learners, got {len(learners)}.")
        self.learners, self.global_ema = list(learners), global_ema
        self.beta_schedule, self.mix_weights = config.mixing.beta(), config.mixing.mix_weights
        self.distribution = config.distribution.schedule()
        self.distribute_per_iteration = config.distribution.per_iteration
        self.shared_lr, self.per_iteration_schedules = config.schedules.shared_lr, config.schedules.per_iteration
        robust = [i for i, lrn in enumerate(self.learners) if lrn.spec.is_robust]
        natural = [i for i in range(len(self.learners)) if i not in robust]
        # β goes to the robust teachers and 1-β to the natural ones, each split evenly. With
        # experts of one kind only (e.g. L∞ + L2), β goes to the first and 1-β to the others.
        self._beta_group, self._rest_group = ((robust, natural) if robust and natural
                                              else ([0], list(range(1, len(learners)))))

    # -- schedules -------------------------------------------------------------------------
    def beta(self, epoch: float, nb_epochs: int) -> float:
        beta = float(self.beta_schedule(epoch, nb_epochs))
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"The β schedule returned {beta} at epoch {epoch}; β must lie in [0, 1].")
        return beta

    def weights(self, epoch: float, nb_epochs: int) -> list[float]:
        """Mixing weight of each learner's teacher at ``epoch``."""
        if self.mix_weights is not None:
            return [float(w) for w in self.mix_weights(epoch, nb_epochs)]
        beta, w = self.beta(epoch, nb_epochs), [0.0] * len(self.learners)
        for i in self._beta_group:
            w[i] = beta / len(self._beta_group)
        for i in self._rest_group:
            w[i] = (1.0 - beta) / len(self._rest_group)
        return w

    def learning_rates(self, epoch: float, nb_epochs: int) -> list[float]:
        lrs = [lrn.scheduled_lr(epoch, nb_epochs) for lrn in self.learners]
        return [lrs[0]] * len(lrs) if self.shared_lr else lrs

    # -- the algorithm ------------------------------------------------------------------------
    def distribute(self) -> None:
        """Copy the global learner into every base learner (weights and buffers)."""
        for learner in self.learners:
            self.global_ema.mixer.copy_(learner.model, self.global_ema.module)

    def train_epoch(self, epoch: int, nb_epochs: int, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                    nb_batches: int) -> dict:
        """One epoch (1-based ``epoch``) over ``batches`` of unit-range inputs and index labels."""
        windows = self.distribution.windows(nb_epochs)
        stats = EpochStats(self.learners, next(self.global_ema.module.parameters()).device)
        distributions, t = 0, float(epoch)
        for i, (u, y) in enumerate(batches):
            if self.per_iteration_schedules:
                t = fractional_epoch(epoch, i, nb_batches)
            if self.per_iteration_schedules or i == 0:
                for learner, lr in zip(self.learners, self.learning_rates(t, nb_epochs)):
                    learner.set_lr(lr)
                weights = self.weights(t, nb_epochs)
            for k, learner in enumerate(self.learners):           # steps 1-2
                stats.add(k, *learner.step(u, y), len(y))
            self.global_ema.update([lrn.teacher.module for lrn in self.learners], weights)  # step 3
            progress = (epoch - 1 + i / nb_batches, fractional_epoch(epoch, i, nb_batches))
            if self.distribution.active(windows, *progress, self.distribute_per_iteration):  # step 4
                self.distribute()
                distributions += 1
            stats.end_step(len(y))
        record = stats.record(epoch)
        return {"epoch": epoch, "beta": self.beta(t, nb_epochs) if self.mix_weights is None else None,
                "mix_weights": weights, "ema_decay": self.global_ema.current_decay(), "distributions": distributions,
                "examples": record["examples"],
                "steps": record["steps"], "learners": record["learners"]}
