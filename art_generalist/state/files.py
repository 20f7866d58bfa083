"""Safe checkpoint files: atomic writes, weights-only loading, RNG capture, safetensors export.

Checkpoints hold only tensors, numbers, strings, lists and dicts, so ``torch.load`` runs with
``weights_only=True`` and never executes code from the file. A file holding any other pickled
object is refused with :class:`UnsafeCheckpointError` naming the objects (the timm
``_torch_load`` rule: no silent unsafe fallback).
"""
from __future__ import annotations

import json
import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

FORMAT_VERSION = 1
PathLike = Union[str, os.PathLike]


class UnsafeCheckpointError(ValueError):
    """The file holds pickled objects other than tensors and plain containers; nothing ran."""


def atomic_save(obj: Any, path: PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def safe_load(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Any:
    """``torch.load(weights_only=True)``; any other pickled object is refused, never run."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {path}.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises UnpicklingError("Weights only load failed ...")
        if type(err).__name__ != "UnpicklingError" and "Weights only load failed" not in str(err):
            raise
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception:  # not a zip checkpoint: fall back to the names in the message
            names = re.findall(r"GLOBAL ([\w.]+)", str(err))
        raise UnsafeCheckpointError(
            f"Refusing to load {path}: it holds pickled objects other than tensors and plain "
            f"containers ({', '.join(names) or 'unknown'}). Nothing in the file was run. "
            f"Checkpoints written by art-generalist never contain such objects."
        ) from None


# -- random number generator states, as weights-only-loadable values -----------------------------
def collect_rng_states() -> dict:
    """torch (CPU and every CUDA device), numpy and Python RNG states."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }


def set_rng_states(states: dict) -> None:
    """Restore what :func:`collect_rng_states` captured (a missing CUDA entry is tolerated)."""
    torch.set_rng_state(states["torch"])
    if states.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = states["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))


# -- published weights ----------------------------------------------------------------------------
def save_safetensors(state_dict: dict, metadata: dict, path: PathLike) -> tuple[Path, Path]:
    """Weights as safetensors (atomically) and ``metadata`` as JSON beside them (``.json``)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    text = json.dumps(metadata, indent=2, sort_keys=True, default=_jsonable)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata={"art_generalist": text})
    os.replace(tmp, path)
    meta_path = path.with_suffix(".json")
    tmp_meta = meta_path.with_name(f".{meta_path.name}.tmp")
    tmp_meta.write_text(text + "\n", encoding="utf-8")
    os.replace(tmp_meta, meta_path)
    return path, meta_path


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return np.asarray(value.tolist() if isinstance(value, torch.Tensor) else value).tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return repr(value)
