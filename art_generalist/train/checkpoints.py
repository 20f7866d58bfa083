"""Trainer state: checkpoints that resume exactly, and export of the shipped model.

A checkpoint holds the trainer's models, optimizers and EMA counters (subclass hooks), the
plug-ins' state, the training progress, the history, the best validation model, every RNG
state, the settings as a plain dict and a format version. It is written atomically and read
back with weights-only loading.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from art_generalist.parallel.ranks import barrier, is_main_process
from art_generalist.state import fingerprint
from art_generalist.state.files import (
    FORMAT_VERSION,
    CorruptCheckpointError,
    PathLike,
    atomic_save,
    collect_rng_states,
    hash_path,
    remove_stale_temporaries,
    safe_load,
    save_safetensors,
    set_rng_states,
)
from art_generalist.train.plugins import PluginList
from art_generalist.train.validation import BestModel

logger = logging.getLogger(__name__)

CHECKPOINT_GLOB = "checkpoint-epoch*.pt"


def checkpoint_name(epoch: int) -> str:
    return f"checkpoint-epoch{epoch:05d}.pt"


def list_checkpoints(directory: Optional[PathLike]) -> list[Path]:
    """Checkpoints in ``directory``, oldest first (temporary files are ignored)."""
    if directory is None:
        return []
    directory = Path(directory)
    return sorted(directory.glob(CHECKPOINT_GLOB)) if directory.is_dir() else []


@dataclass
class Progress:
    """Where a run stands: the last finished epoch of a budget of ``nb_epochs``, the optimizer
    steps taken so far, and where this run's entries start in the history."""

    epoch: int = 0
    nb_epochs: int = 0
    global_step: int = 0
    fit_history_start: int = 0


class TrainerState:
    """``state_dict``/``load_state_dict``, ``save_checkpoint``/``load_checkpoint``, checkpoint
    timing and resume within ``fit``, and ``export``.

    Subclasses provide ``settings()`` (a plain dict), ``_model_state()``,
    ``_load_model_state(state)``, ``plugins`` (a :class:`PluginList`) and ``_shipped_model()``.
    """

    progress: Progress
    best: BestModel
    scheduler: Optional[Any] = None  #: the torch scheduler of the running ``fit(scheduler=...)``
    plugins: PluginList
    history: list
    #: what this run is (:mod:`~art_generalist.state.fingerprint`), taken when ``fit`` starts
    _run_fingerprint: Optional[dict] = None

    # -- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to resume training bit for bit (tensors and plain values only)."""
        return {"format_version": FORMAT_VERSION, "trainer": self._state_name(), "settings": self.settings(),
                "models": self._model_state(), "plugins": self.plugins.state_dict(),
                "progress": {**dataclasses.asdict(self.progress), "best_score": self.best.score},
                "history": list(self.history), "best_state": self.best.state, "rng": collect_rng_states(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "fingerprint": self._run_fingerprint or {"trainer": self.fingerprint(), "data": None}}

    def fingerprint(self) -> dict:
        """What the settings do not name: every model's structure and every learner's optimizer
        hyper-parameters (lr before any schedule), by name."""
        models = {"global": fingerprint.model_structure(self.global_space.model)}
        models.update({lrn.name: fingerprint.model_structure(lrn.model) for lrn in self._learners()
                       if lrn.model is not self.global_space.model})
        return {"models": models, "optimizers": {lrn.name: fingerprint.optimizer_hparams(lrn.optimizer, lrn.base_lrs)
                                                 for lrn in self._learners()}}

    def load_state_dict(self, state: dict, strict_settings: bool = True) -> None:
        """Restore a :meth:`state_dict`; the trainer must be built with the same model and settings."""
        version = state.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"Unsupported checkpoint format_version {version!r}; this version of "
                             f"art-generalist reads format {FORMAT_VERSION}.")
        if state.get("trainer") not in (self._state_name(), *self._legacy_state_names):
            raise ValueError(f"The checkpoint was written by {state.get('trainer')!r}, not {self._state_name()!r}.")
        mine, theirs = self.settings(), state["settings"]
        differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        if differ and strict_settings:
            detail = "; ".join(f"{k}: checkpoint {theirs.get(k)!r}, trainer {mine.get(k)!r}" for k in differ[:6])
            raise ValueError(f"The checkpoint's settings differ from this trainer's ({detail}). Build the "
                             f"trainer with the same settings, or pass strict_settings=False.")
        self._load_model_state(state["models"])
        self.plugins.load_state_dict(state.get("plugins", {}))
        progress = dict(state["progress"])
        self.best.score, self.best.state = progress.pop("best_score", None), state.get("best_state")
        fields = {f.name for f in dataclasses.fields(Progress)}
        self.progress = Progress(**{k: v for k, v in progress.items() if k in fields})
        self.history = list(state["history"])
        self._load_scheduler(state.get("scheduler"))
        set_rng_states(state["rng"])

    def _load_scheduler(self, saved: Optional[dict]) -> None:
        """The ``fit(scheduler=...)`` of the run resumed: its state, and its lr in its optimizer."""
        scheduler = self.scheduler
        if scheduler is not None and saved is None:
            raise ValueError("The checkpoint was written by a fit without `scheduler=`; resume it the same way.")
        if saved is not None and scheduler is None:
            logger.warning("The checkpoint was written by a fit with `scheduler=`: pass the same scheduler to "
                           "resume it; its state is not restored now.")
        if scheduler is not None:
            scheduler.load_state_dict(saved)
            for group, lr in zip(scheduler.optimizer.param_groups, scheduler.get_last_lr()):
                group["lr"] = lr

    #: Names under which earlier versions wrote this trainer's checkpoints.
    _legacy_state_names: tuple[str, ...] = ()

    def _state_name(self) -> str:
        return type(self).__name__

    def save_checkpoint(self, path: PathLike) -> Path:
        """Write :meth:`state_dict` atomically (temporary file, then rename) with its SHA-256;
        a state holding a NaN or infinite weight is refused, so it never replaces a good one."""
        state = self.state_dict()
        _refuse_non_finite(state["models"], f"checkpoint {path}")
        return atomic_save(state, path)

    def load_checkpoint(self, path: PathLike, strict_settings: bool = True) -> dict:
        """Load a checkpoint written by :meth:`save_checkpoint` (weights-only; unsafe files refused;
        its recorded SHA-256 verified)."""
        state = self._read_checkpoint(path)
        self.load_state_dict(state, strict_settings=strict_settings)
        logger.info("loaded checkpoint %s (epoch %s)", path, self.progress.epoch)
        return state

    @staticmethod
    def _read_checkpoint(path: PathLike) -> dict:
        state = safe_load(path, map_location="cpu")
        if not isinstance(state, dict) or "format_version" not in state:
            raise ValueError(f"{path} is not an art-generalist checkpoint.")
        return state

    # -- within fit -------------------------------------------------------------------------------
    def _start_run(self, nb_epochs: int, checkpoint_dir: Optional[PathLike], resume: bool,
                   data: Optional[dict] = None, overwrite: bool = False) -> int:
        """Resume from the newest intact checkpoint in ``checkpoint_dir`` or start afresh; returns
        the first epoch to train. ``data`` describes the training data (see
        :mod:`~art_generalist.state.fingerprint`); a checkpoint of another run is refused."""
        self._run_fingerprint = {"trainer": self.fingerprint(), "data": data}
        found = list_checkpoints(checkpoint_dir)
        if checkpoint_dir is not None and is_main_process():
            remove_stale_temporaries(checkpoint_dir)  # what a killed write left
        if found and not resume:
            if not overwrite:
                raise FileExistsError(
                    f"{checkpoint_dir} holds the checkpoints of another run ({found[-1].name}, ...): pass "
                    f"resume=True to continue it, overwrite=True to delete them and start afresh, or another "
                    f"checkpoint_dir.")
            if is_main_process():
                for old in found:
                    old.unlink(missing_ok=True)
                    hash_path(old).unlink(missing_ok=True)
            barrier()
            found = []
        state, path = self._newest_intact(found)
        if state is None:
            self.progress = Progress(nb_epochs=nb_epochs, global_step=self.progress.global_step,
                                     fit_history_start=len(self.history))
            self.best = BestModel()
            return 1
        stored = state.get("fingerprint") or {}
        differ = fingerprint.differences(state.get("settings"), self.settings())
        differ += fingerprint.differences(stored.get("trainer"), self._run_fingerprint["trainer"])
        if stored.get("data") is not None and data is not None:
            differ += fingerprint.differences(stored["data"], data, "data.")
        fit_args = state["progress"].get("nb_epochs")
        if fit_args != nb_epochs:
            differ.append(f"nb_epochs: checkpoint {fit_args}, now {nb_epochs}")
        if differ:
            raise fingerprint.OtherRunError(
                f"The checkpoint {path} belongs to another run; resume with the same settings, model, optimizer and "
                f"data, or start afresh in another checkpoint_dir. What differs: "
                + "; ".join(differ[:8]) + (f"; and {len(differ) - 8} more" if len(differ) > 8 else ""))
        self.load_state_dict(state)
        self._run_fingerprint = stored or self._run_fingerprint  # the run continues under its own record
        logger.info("resumed from checkpoint %s (epoch %s)", path, self.progress.epoch)
        return self.progress.epoch + 1

    def _newest_intact(self, found: list[Path]) -> tuple[Optional[dict], Optional[Path]]:
        """The newest checkpoint that reads back whole, warning about each damaged one passed over."""
        for path in reversed(found):
            try:
                return self._read_checkpoint(path), path
            except CorruptCheckpointError as err:
                logger.warning("skipping a damaged checkpoint, falling back to an older one: %s", err)
        if found:
            raise CorruptCheckpointError(f"Every checkpoint in {found[0].parent} is damaged "
                                         f"({', '.join(p.name for p in found)}); nothing to resume from.")
        return None, None

    def _checkpoint_epoch(self, directory: Optional[PathLike], epoch: int, every: int, keep_last: int) -> None:
        """After an epoch: write a checkpoint every ``every`` epochs and at the last one, keep
        the newest ``keep_last``."""
        if directory is None or (epoch % every != 0 and epoch != self.progress.nb_epochs):
            return
        if is_main_process():  # under torch.distributed rank 0 writes, the others wait for it
            self.save_checkpoint(Path(directory) / checkpoint_name(epoch))
            for old in list_checkpoints(directory)[:-keep_last]:
                old.unlink(missing_ok=True)
                hash_path(old).unlink(missing_ok=True)
        barrier()

    # -- export -----------------------------------------------------------------------------------
    def export(self, path: PathLike, report: Optional[dict] = None, data: Optional[dict] = None) -> tuple[Path, Path]:
        """The shipped model's weights as safetensors plus JSON metadata (architecture,
        preprocessing, clip_values, threat model, plug-ins, evaluation report, and ``data``: what
        the model was trained on, e.g. the CLI's data set name and root, which ``evaluate``
        defaults to). See :func:`art_generalist.state.export.load_exported`."""
        clf = self.get_classifier()
        model = clf.model
        metadata: dict[str, Any] = {
            "format": "art-generalist-export", "format_version": FORMAT_VERSION, "trainer": self._state_name(),
            "architecture": {"class": f"{type(model).__module__}.{type(model).__qualname__}",
                             "registry": getattr(model, "registry_spec", None)},
            "input_shape": list(clf.input_shape), "nb_classes": int(clf.nb_classes),
            "clip_values": [float(v) for v in self.clip_values],
            "preprocessing": {"mean": self.mean.tolist(), "std": self.std.tolist()},  # nested: the shape is kept
            "channels_first": bool(clf.channels_first),
            "threat_model": {"norm": self.norm.value, "eps": float(self.eps)},
            "epochs_trained": len(self.history), "settings": self.settings(),
            "plugins": self.plugins.export_metadata(), "report": report,
            **({"data": dict(data)} if data is not None else {}),
        }
        state = {k: v for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
        _refuse_non_finite(state, f"export {path}")
        if is_main_process():  # under torch.distributed rank 0 writes, the others wait for it
            save_safetensors(state, metadata, path)
        barrier()
        return Path(path), Path(path).with_suffix(".json")


def _refuse_non_finite(obj: Any, what: str) -> None:
    """Raise ``FloatingPointError`` when a floating tensor in ``obj`` (nested dicts and lists)
    holds a NaN or an infinity."""
    stack, bad = [("", obj)], []
    while stack:
        name, item = stack.pop()
        if isinstance(item, dict):
            stack += [(f"{name}.{k}" if name else str(k), v) for k, v in item.items()]
        elif isinstance(item, (list, tuple)):
            stack += [(f"{name}[{i}]", v) for i, v in enumerate(item)]
        elif isinstance(item, torch.Tensor) and item.is_floating_point() and not bool(torch.isfinite(item).all()):
            bad.append(name)
    if bad:
        raise FloatingPointError(f"Refusing to write the {what}: {', '.join(sorted(bad)[:5])} hold NaN or "
                                 f"infinite values (the previous file, if any, is kept).")
