"""Trainer state: checkpoints that resume exactly, and export of the shipped model.

A checkpoint holds the trainer's models, optimizers and EMA counters (subclass hooks), the
training progress, the history, every RNG state, the settings as a plain dict and a format
version. It is written atomically and read back with weights-only loading.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import torch

from art_generalist.checkpoint import (FORMAT_VERSION, PathLike, atomic_save, collect_rng_states, safe_load,
                                       save_safetensors, set_rng_states)

logger = logging.getLogger(__name__)

CHECKPOINT_GLOB = "checkpoint-epoch*.pt"


def checkpoint_name(epoch: int) -> str:
    return f"checkpoint-epoch{epoch:05d}.pt"


def list_checkpoints(directory: PathLike) -> list[Path]:
    """Checkpoints in ``directory``, oldest first (temporary files are ignored)."""
    directory = Path(directory)
    return sorted(directory.glob(CHECKPOINT_GLOB)) if directory.is_dir() else []


class PersistenceMixin:
    """``state_dict``/``load_state_dict``, ``save_checkpoint``/``load_checkpoint`` and ``export``.

    Subclasses provide ``settings()`` (a plain dict), ``_model_state()`` and
    ``_load_model_state(state)``.
    """

    _progress: dict
    _best_state: Optional[dict]
    history: list

    # hooks -------------------------------------------------------------------------------------
    def settings(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def _model_state(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def _load_model_state(self, state: dict) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to resume training bit for bit (tensors and plain values only)."""
        return {"format_version": FORMAT_VERSION, "trainer": type(self).__name__, "settings": self.settings(),
                "models": self._model_state(), "progress": dict(self._progress), "history": list(self.history),
                "best_state": self._best_state, "rng": collect_rng_states()}

    def load_state_dict(self, state: dict, strict_settings: bool = True) -> None:
        """Restore a :meth:`state_dict`; the trainer must be built with the same model and settings."""
        version = state.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"Unsupported checkpoint format_version {version!r}; this version of "
                             f"art-generalist reads format {FORMAT_VERSION}.")
        if state.get("trainer") != type(self).__name__:
            raise ValueError(f"The checkpoint was written by {state.get('trainer')!r}, not {type(self).__name__!r}.")
        mine, theirs = self.settings(), state["settings"]
        differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        if differ and strict_settings:
            detail = "; ".join(f"{k}: checkpoint {theirs.get(k)!r}, trainer {mine.get(k)!r}" for k in differ[:6])
            raise ValueError(f"The checkpoint's settings differ from this trainer's ({detail}). Build the "
                             f"trainer with the same settings, or pass strict_settings=False.")
        self._load_model_state(state["models"])
        self._progress = dict(state["progress"])
        self.history = list(state["history"])
        self._best_state = state.get("best_state")
        set_rng_states(state["rng"])

    def save_checkpoint(self, path: PathLike) -> Path:
        """Write :meth:`state_dict` atomically (temporary file, then rename)."""
        return atomic_save(self.state_dict(), path)

    def load_checkpoint(self, path: PathLike, strict_settings: bool = True) -> dict:
        """Load a checkpoint written by :meth:`save_checkpoint` (weights-only; unsafe files refused)."""
        state = safe_load(path, map_location="cpu")
        if not isinstance(state, dict) or "format_version" not in state:
            raise ValueError(f"{path} is not an art-generalist checkpoint.")
        self.load_state_dict(state, strict_settings=strict_settings)
        logger.info("loaded checkpoint %s (epoch %s)", path, self._progress.get("epoch"))
        return state

    def _write_epoch_checkpoint(self, directory: PathLike, epoch: int, keep_last: int) -> Path:
        path = self.save_checkpoint(Path(directory) / checkpoint_name(epoch))
        for old in list_checkpoints(directory)[:-keep_last]:
            old.unlink(missing_ok=True)
        return path

    # export -------------------------------------------------------------------------------------
    def export(self, path: PathLike, report: Optional[dict] = None) -> tuple[Path, Path]:
        """The shipped model's weights as safetensors plus JSON metadata (architecture,
        preprocessing, clip_values, threat model, evaluation report). See
        :func:`art_generalist.export.load_exported`."""
        clf = self.get_classifier()
        model = clf.model
        metadata: dict[str, Any] = {
            "format": "art-generalist-export", "format_version": FORMAT_VERSION, "trainer": type(self).__name__,
            "architecture": {"class": f"{type(model).__module__}.{type(model).__qualname__}",
                             "registry": getattr(model, "registry_spec", None)},
            "input_shape": list(clf.input_shape), "nb_classes": int(clf.nb_classes),
            "clip_values": [float(v) for v in self.clip_values],
            "preprocessing": {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]},
            "threat_model": {"norm": self.norm.value, "eps": float(self.eps)},
            "epochs_trained": len(self.history), "settings": self.settings(), "report": report,
        }
        state = {k: v for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
        return save_safetensors(state, metadata, path)
