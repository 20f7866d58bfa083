"""Safe checkpoint files: atomic writes, weights-only loading, RNG capture, safetensors export.

Checkpoints hold only tensors, numbers, strings, lists and dicts, so ``torch.load`` runs with
``weights_only=True`` and never executes code from the file. A file holding any other pickled
object is refused with :class:`UnsafeCheckpointError` naming the objects (the timm
``_torch_load`` rule: no silent unsafe fallback).
"""
from __future__ import annotations

import hashlib
import io
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
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``;
    then the SHA-256 and size of those bytes into ``<path>.sha256``, which :func:`safe_load`
    verifies (torch itself ignores the zip CRCs, so a flipped bit would load silently)."""
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getvalue()
    atomic_write_bytes(path, data)
    atomic_write_text(hash_path(path), f"{hashlib.sha256(data).hexdigest()} {len(data)}\n")
    return path


def hash_path(path: PathLike) -> Path:
    """Where :func:`atomic_save` records the hash of ``path``."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` through a temporary file in the same folder, fsync, then rename over
    ``path``: a kill or a full disk mid-write leaves the old file whole, never half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        _unlink_quietly(tmp)
        raise _disk_error(err, path) from err
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return path


def atomic_write_text(path: PathLike, text: str) -> Path:
    """``text`` (UTF-8) written atomically (see :func:`atomic_write_bytes`)."""
    return atomic_write_bytes(Path(path), text.encode("utf-8"))


def atomic_write_json(path: PathLike, obj: Any, **dumps_kwargs: Any) -> Path:
    """:func:`atomic_write_text` of ``json.dumps(obj, **dumps_kwargs)`` plus a final newline."""
    return atomic_write_text(path, json.dumps(obj, **dumps_kwargs) + "\n")


def read_json(path: PathLike) -> Any:
    """``json.loads`` of a result file, with a message naming the file when it is not JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); it was not written by this version's atomic "
                         f"writer, or was edited. Move it aside to start afresh.") from None


def remove_stale_temporaries(directory: PathLike) -> list[Path]:
    """Delete the ``.<name>.*.tmp`` files a killed atomic write left in ``directory``."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = [p for p in directory.glob(".*.tmp") if p.is_file()]
    for p in stale:
        _unlink_quietly(p)
    return stale


def _unlink_quietly(path: PathLike) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _disk_error(err: Exception, path: Path) -> OSError:
    """The OS error of a failed write, restated with the path and the free space left."""
    import errno
    import shutil

    try:
        free = f"{shutil.disk_usage(path.parent).free / 2**20:.1f} MiB free"
    except OSError:
        free = "free space unknown"
    code = getattr(err, "errno", None)
    reason = ("the disk is full" if code in (errno.ENOSPC, errno.EDQUOT)
              else getattr(err, "strerror", None) or str(err))
    return OSError(code, f"Could not write {path}: {reason} ({free} on its file system). The previous "
                              f"file, if any, is untouched")


class CorruptCheckpointError(ValueError):
    """The file does not match the hash recorded when it was written, or torch cannot read it."""


def safe_load(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Any:
    """``torch.load(weights_only=True)``; any other pickled object is refused, never run.

    The file is read once: the bytes checked against ``<path>.sha256`` (when :func:`atomic_save`
    wrote one) are the bytes unpickled. A mismatch, or a file torch cannot read, raises
    :class:`CorruptCheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {path}.")
    data = path.read_bytes()
    recorded = hash_path(path)
    if recorded.is_file():
        fields = recorded.read_text(encoding="utf-8").split()
        digest, size = hashlib.sha256(data).hexdigest(), len(data)
        if len(fields) != 2 or fields != [digest, str(size)]:
            raise CorruptCheckpointError(
                f"{path} is corrupt: its SHA-256/size {digest[:16]}.../{size} differ from those recorded when "
                f"it was written ({' '.join(fields)[:40]}...).")
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises UnpicklingError("Weights only load failed ...")
        if type(err).__name__ != "UnpicklingError" and "Weights only load failed" not in str(err):
            raise CorruptCheckpointError(f"{path} cannot be read as a torch checkpoint (truncated or "
                                         f"damaged?): {err}") from None
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data))
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
    from safetensors.torch import save

    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    text = json.dumps(metadata, indent=2, sort_keys=True, default=_jsonable)
    atomic_write_bytes(path, save(tensors, metadata={"art_generalist": text}))
    meta_path = path.with_suffix(".json")
    atomic_write_text(meta_path, text + "\n")
    return path, meta_path


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return np.asarray(value.tolist() if isinstance(value, torch.Tensor) else value).tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return repr(value)
