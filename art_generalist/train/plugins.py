"""Plug-ins: code that attaches to the training loop at named points, for every trainer.

The engine owns the *when*, the plug-in the *what* (as torchattacks' ``Attack`` owns
``__call__`` and subclasses write ``forward``). Sparse masks, frozen backbones and multi-process
gradient reduction attach here; the Generalist loop does not learn about them.

Calling contract (every trainer of the package honours it):

* ``trainable(name, model)``: while the trainer is built, once per model that gets an optimizer
  (each base learner by name; ``"global"`` for the trained model of a single-learner trainer).
  Returns the parameters to train, or ``None`` for all of them. Parameters left out are frozen
  (``requires_grad=False``) and get no optimizer state.
* ``setup(trainer)``: once, at the end of the trainer's construction, when every model exists.
* ``begin_fit(trainer, nb_epochs, nb_batches, batches, validation)``: once per ``fit`` call
  (``fit``, ``fit_generator``, ``fit_loader``), after a resume from a checkpoint and after the
  trainer's own ``_begin_fit``, before the first epoch: the budget is ``nb_epochs`` epochs of
  ``nb_batches`` iterations. ``batches()`` yields one epoch of the training batches ``(u, y)``
  exactly as the trainer trains on them (unit-range inputs, augmented, index labels, on the
  device; each call draws a new epoch, shuffling with the global RNG). ``validation`` is the
  ``(u, y)`` validation tensors, or ``None`` when ``fit`` runs without ``validation_data``.
  ``trainer.progress.epoch`` is 0 for a fresh run and the last finished epoch after a resume.
* ``reduce_gradients(learner)``: after each backward pass, before the optimizer step (e.g. an
  all-reduce of the gradients across processes).
* ``after_step(learner)``: after each optimizer step (e.g. re-applying sparsity masks), once per
  learner per iteration in the order the learners step (Generalist: robust, then natural), before
  the learner's EMA teacher follows it.
* ``after_epoch(trainer, record)``: after each epoch's training and validation (with
  ``validation_data`` the record holds ``val_clean_acc``, ``val_pgd_acc``, ``val_pgd_loss`` and,
  under ``restore_best``, ``best``), before the record joins the history and the epoch's
  checkpoint is written; entries added to ``record`` go into the history. Validation changes no
  weight, so the weights seen here are the ones validated.
* ``check_model(model)``: when the trainer is built, before any copy of the user's model: refuse
  a model the plug-in cannot work on (e.g. one pruned with ``torch.nn.utils.prune``).
* ``state_dict()`` / ``load_state_dict(state)``: tensors and plain values that join every
  checkpoint, for exact resume.
* ``export_metadata()``: a plain dict that joins the metadata of ``trainer.export``.

Run-time plug-ins (:meth:`PluginList.attach`, e.g. the data-parallel gradient reduction of
:mod:`art_generalist.train.data_parallel`) are called before the others at every point, but are not part
of the trainer's settings, checkpoints or exports (a run saved on N ranks resumes on M).

The ``trainer`` a hook receives offers a public view, as Lightning's callbacks get their
trainer: ``progress``, ``history``, ``global_space``, ``plugins``, ``base_learners()`` (the
learners that step), ``models()`` (the models by name, in input space), ``model_state()`` and
``load_model_state(state)``; plug-ins need nothing private.

Subclasses override what they need; every default does nothing.
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Optional, Sequence

import torch
from torch import nn

from art_generalist.core.learner import StepHooks

if TYPE_CHECKING:  # pragma: no cover
    from art_generalist.core.learner import Learner

Batch = tuple[torch.Tensor, torch.Tensor]


class Plugin:
    """Base class of the plug-ins; ``name`` keys its state in checkpoints and exports."""

    name = "plugin"

    def trainable(self, name: str, model: nn.Module) -> Optional[Iterable[nn.Parameter]]:
        return None

    def check_model(self, model: nn.Module) -> None:
        pass

    def setup(self, trainer: Any) -> None:
        pass

    def begin_fit(self, trainer: Any, nb_epochs: int, nb_batches: int, batches: Callable[[], Iterator[Batch]],
                  validation: Optional[Batch]) -> None:
        pass

    def reduce_gradients(self, learner: "Learner") -> None:
        pass

    def after_step(self, learner: "Learner") -> None:
        pass

    def after_epoch(self, trainer: Any, record: dict) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def export_metadata(self) -> dict:
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class PluginList(StepHooks):
    """The plug-ins of one trainer, called in order."""

    def __init__(self, plugins: Optional[Sequence[Plugin]] = None) -> None:
        self.plugins = list(plugins or [])
        self.runtime: list[Plugin] = []
        for p in self.plugins:
            if not isinstance(p, Plugin):
                raise TypeError(f"`plugins` must hold art_generalist Plugin instances, got {type(p).__name__}.")
        names = [p.name for p in self.plugins]
        if len(set(names)) != len(names):
            raise ValueError(f"Plug-in names must be unique (they key checkpoint state), got {names}.")

    def __iter__(self):
        return iter(self.plugins)

    def __len__(self) -> int:
        return len(self.plugins)

    def attach(self, plugin: Plugin) -> None:
        """Add a run-time plug-in: called first at every point, never saved or described."""
        if not isinstance(plugin, Plugin):
            raise TypeError(f"`plugin` must be an art_generalist.train.plugins.Plugin, got {type(plugin).__name__}.")
        self.runtime.append(plugin)

    def trainable_for(self, name: str) -> Callable[[nn.Module], list[nn.Parameter]]:
        """:meth:`trainable` for the model called ``name``, as a function of the model."""
        return functools.partial(self.trainable, name)

    def trainable(self, name: str, model: nn.Module) -> list[nn.Parameter]:
        """The parameters every plug-in lets train (all by default); the others are frozen."""
        params = list(model.parameters())
        for p in self.plugins:
            chosen = p.trainable(name, model)
            if chosen is not None:
                ids = {id(q) for q in chosen}
                params = [q for q in params if id(q) in ids]
        kept = {id(q) for q in params}
        for q in model.parameters():
            if id(q) not in kept:
                q.requires_grad_(False)
        if not params:
            raise ValueError(f"The plug-ins leave no trainable parameter in model `{name}`.")
        return params

    def reduce_gradients(self, learner: "Learner") -> None:
        for p in self.runtime + self.plugins:
            p.reduce_gradients(learner)

    def after_step(self, learner: "Learner") -> None:
        for p in self.runtime + self.plugins:
            p.after_step(learner)

    def after_epoch(self, trainer: Any, record: dict) -> None:
        for p in self.runtime + self.plugins:
            p.after_epoch(trainer, record)

    def setup(self, trainer: Any) -> None:
        for p in self.plugins:
            p.setup(trainer)

    def begin_fit(self, trainer: Any, nb_epochs: int, nb_batches: int, batches: Callable[[], Iterator[Batch]],
                  validation: Optional[Batch]) -> None:
        for p in self.runtime + self.plugins:
            p.begin_fit(trainer, nb_epochs, nb_batches, batches, validation)

    def state_dict(self) -> dict:
        return {p.name: p.state_dict() for p in self.plugins}

    def load_state_dict(self, state: dict) -> None:
        missing = sorted({p.name for p in self.plugins} - set(state))
        if missing:
            raise ValueError(f"The checkpoint holds no state for the plug-in(s) {missing}.")
        for p in self.plugins:
            p.load_state_dict(state[p.name])

    def export_metadata(self) -> dict:
        return {p.name: p.export_metadata() for p in self.plugins}

    def describe(self) -> list[str]:
        return [repr(p) for p in self.plugins]
