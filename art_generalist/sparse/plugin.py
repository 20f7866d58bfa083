"""The sparse-training plug-in shared by Flying Bird, Flying Bird+ and Robust Bird.

A :class:`SparsityPlugin` keeps **one** :class:`~art_generalist.sparse.masks.Masks` object for
every model of its trainer: with :class:`~art_generalist.GeneralistTrainer` the base learners,
their EMA teachers and the global learner; with
:class:`~art_generalist.SingleLearnerTrainer` its one model. It attaches at the hooks of
:mod:`art_generalist.train.plugins`:

* ``setup``: finds the models (``trainer.models()``) and the learners (``trainer.base_learners()``),
  picks the *primary* learner (the first adversarial one: the robust learner of Generalist, the
  only learner otherwise), measures the model's FLOPs (:mod:`~art_generalist.sparse.flops`) and,
  for the methods that are sparse from the start, draws the masks and applies them to every model
  and every learner's optimizer state.
* ``after_step(learner)``: re-applies the masks to that learner's weights and optimizer state
  (momentum buffers included), so masked weights stay exactly zero. The EMA teachers and the
  global learner are convex combinations of masked models, so their zeros stay zero too. Each
  step of the primary learner counts one training iteration (once per iteration, however many
  learners there are); subclasses change the topology there and then re-apply the masks to
  every model.
* ``after_epoch``: adds a ``sparsity`` entry to the epoch's history record: the global density
  and the epoch's training FLOPs, sparse and dense-equivalent (:mod:`~art_generalist.sparse.report`).
* ``state_dict`` / ``load_state_dict``: masks (boolean tensors), counters and the plug-in's own
  ``torch.Generator`` state, so a resumed run is bit-identical; ``export_metadata``: the method,
  its settings and the global and per-layer densities.

Unstructured sparsity saves FLOPs, not wall-clock time: dense kernels multiply the zeros all the
same, so a masked model trains and infers as fast as the dense one.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional

import torch
from torch import nn

from art_generalist.core.options import check_int
from art_generalist.parallel import ranks
from art_generalist.sparse.flops import SparseFlops
from art_generalist.sparse.layers import check_density, prunable_modules
from art_generalist.sparse.masks import Masks
from art_generalist.sparse.report import learner_cost, sparsity_report
from art_generalist.train.plugins import Batch, Plugin

if TYPE_CHECKING:  # pragma: no cover
    from art_generalist.core.learner import Learner

logger = logging.getLogger(__name__)


class SparsityPlugin(Plugin):
    """Base class of the sparse-training methods (see the module docstring).

    Subclasses set ``method``, extend :meth:`settings` and override :meth:`_initial_masks`
    (masks drawn at ``setup``, or ``None`` to build them later) and :meth:`_after_iteration`.

    :param density: the fraction of the prunable (Conv2d and Linear) weights kept, in (0, 1].
    :param seed: seed of the plug-in's own ``torch.Generator`` (random masks and growth), which
        leaves the training RNG stream alone.
    """

    name = "sparsity"

    def check_model(self, model: nn.Module) -> None:
        """Refuse a model without layers that can hold a mask (or one already pruned with
        ``torch.nn.utils.prune``), before the trainer's copy of it would fail."""
        prunable_modules(model)
    method = "sparse training"

    def __init__(self, density: float = 0.2, seed: int = 0) -> None:
        self.density = check_density(density)
        check_int(seed, "seed", 0)
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.masks: Optional[Masks] = None
        self.flops: Optional[SparseFlops] = None
        self.primary: Optional["Learner"] = None
        self.device = torch.device("cpu")
        self.nb_epochs = self.nb_batches = 0
        self.iteration = 0  # training iterations of the current run (steps of the primary learner)
        self._models: list[nn.Module] = []
        self._learners: list["Learner"] = []
        self._layer_density: dict[str, float] = {}
        self._epoch = self._new_epoch()

    # -- description ---------------------------------------------------------------------------
    def settings(self) -> dict:
        """The method's settings as plain values (they join checkpoints, exports and reports)."""
        return {"density": self.density, "seed": self.seed}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.settings().items())})"

    def current_density(self) -> float:
        """Kept fraction of the prunable weights now (1.0 before any mask exists)."""
        return self.masks.density() if self.masks is not None else 1.0

    # -- subclass hooks ---------------------------------------------------------------------------
    def _initial_masks(self, model: nn.Module) -> Optional[Masks]:
        """Masks drawn when the trainer is built (``None``: none yet)."""
        return None

    def _after_iteration(self, learner: "Learner") -> None:
        """After each training iteration (the primary learner's step), masks already applied."""

    def _fresh_run(self) -> None:
        """At the start of a run that does not resume from a checkpoint."""

    def _stage1(self) -> Optional[dict]:
        """A dense search stage before sparse training (Robust Bird): its epochs, examples, FLOPs, seconds."""
        return None

    # -- hooks of the plug-in contract ------------------------------------------------------------
    def setup(self, trainer: Any) -> None:
        learners = trainer.base_learners()
        if not learners:
            raise ValueError(f"{type(self).__name__} needs a trainer with learners; {type(trainer).__name__} "
                             f"lists none.")
        models: list[nn.Module] = []
        for model in [*(space.model for space in trainer.models().values()), *(lrn.model for lrn in learners)]:
            if all(model is not m for m in models):
                prunable_modules(model)  # a clear error for a model without a maskable layer
                models.append(model)
        self._models, self._learners = models, learners
        self.primary = next((lrn for lrn in learners if lrn.attack is not None), learners[0])
        model = self.primary.model
        self.device = next(model.parameters()).device
        self.flops = SparseFlops.measure(model, trainer.get_classifier().input_shape)
        masks = self._initial_masks(model)
        if masks is not None:
            self.install(masks)

    def begin_fit(self, trainer: Any, nb_epochs: int, nb_batches: int, batches: Callable[[], Iterator[Batch]],
                  validation: Optional[Batch]) -> None:
        self.nb_epochs, self.nb_batches = nb_epochs, nb_batches
        if trainer.progress.epoch == 0:  # a fresh run (a resumed one keeps its counters)
            self.iteration, self._epoch = 0, self._new_epoch()
            self._fresh_run()

    def after_step(self, learner: "Learner") -> None:
        if self.masks is None:
            return
        self.masks.apply_(learner.model)
        self.masks.apply_to_optimizer_(learner.optimizer, learner.model)
        if learner is self.primary:
            self.iteration += 1
            self._epoch["iterations"] += 1
            sums = self._epoch["density_sums"]
            for name, d in self._layer_density.items():
                sums[name] = sums.get(name, 0.0) + d
            self._after_iteration(learner)

    def after_epoch(self, trainer: Any, record: dict) -> None:
        epoch = self._epoch
        densities = ({n: s / epoch["iterations"] for n, s in epoch["density_sums"].items()}
                     if epoch["iterations"] else dict(self._layer_density))
        examples = int(record.get("examples", 0))
        record["sparsity"] = {
            "density": self.current_density(),
            "train_flops_sparse": examples * sum(learner_cost(self.flops, lrn, densities) for lrn in self._learners),
            "train_flops_dense": examples * sum(learner_cost(self.flops, lrn, None) for lrn in self._learners),
            "updates": epoch["updates"]}
        self._epoch = self._new_epoch()

    # -- masks on every model ---------------------------------------------------------------------
    def install(self, masks: Masks) -> None:
        """Use ``masks`` from now on: applied to every model and every learner's optimizer state."""
        self.masks = masks
        self.apply_all()

    def apply_all(self) -> None:
        """Zero the masked weights of every model and the masked optimizer state of every learner.
        Under torch.distributed every rank takes rank 0's masks first, so all prune the same weights."""
        if ranks.active():  # one flat buffer for all the masks
            names = list(self.masks)
            for name, mask in zip(names, ranks.broadcast_state([self.masks[n] for n in names])):
                self.masks[name] = mask
        for model in self._models:
            self.masks.apply_(model)
        for lrn in self._learners:
            self.masks.apply_to_optimizer_(lrn.optimizer, lrn.model)
        self._layer_density = self.masks.layer_densities()

    # -- state, export, report ------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"masks": self.masks.state_dict() if self.masks is not None else {},
                "generator": self.generator.get_state(), "iteration": self.iteration,
                "budget": [self.nb_epochs, self.nb_batches],
                "epoch": {**self._epoch, "density_sums": dict(self._epoch["density_sums"])}}

    def load_state_dict(self, state: dict) -> None:
        masks = state["masks"]
        if not masks:
            self.masks = None
        elif self.masks is None:
            self.masks = Masks.from_state_dict(masks).to(self.device)
            for model in self._models:
                self.masks.check(model)
        else:
            self.masks.load_state_dict(masks)
        self._layer_density = self.masks.layer_densities() if self.masks is not None else {}
        self.generator.set_state(state["generator"])
        self.iteration = int(state["iteration"])
        self.nb_epochs, self.nb_batches = (int(v) for v in state["budget"])
        saved = state["epoch"]
        self._epoch = {**saved, "density_sums": dict(saved["density_sums"])}

    def export_metadata(self) -> dict:
        meta: dict[str, Any] = {"method": self.method, "settings": self.settings(),
                                "density": self.current_density()}
        if self.masks is not None:
            meta.update(nnz=self.masks.nnz(), numel=self.masks.numel(), layers=self.masks.layer_densities())
        if self._stage1() is not None:
            meta["stage1"] = self._stage1()
        return meta

    def report(self, trainer: Any) -> dict:
        """See :func:`art_generalist.sparse.report.sparsity_report`."""
        return sparsity_report(self, trainer.history)

    @staticmethod
    def _new_epoch() -> dict:
        return {"iterations": 0, "density_sums": {}, "updates": 0}
