"""Read source checkpoints safely and map their keys onto a plain model.

Supported layouts, detected from the keys (prefixes are matched at the start of a key only,
never as substrings, unlike RobustBench's renaming helper):

* plain torchvision state dicts (``conv1.weight``, ..., ``fc.bias``);
* MadryLab ``robustness`` checkpoints: ``{'model' or 'state_dict': ...}`` with ``module.model.*``
  (kept, prefix stripped), ``module.attacker.model.*`` and ``module.attacker.normalize.*``
  (dropped: a copy) and ``module.normalizer.new_mean/new_std`` (returned as the source mean/std);
* RobustBench-style state dicts: ``module.`` and/or ``model.`` prefixes, ``normalize.*`` entries;
* this package's safetensors exports (``trainer.export``), whose metadata carries the
  preprocessing and the registry architecture.

Pickled files are read with ``torch.load(weights_only=True)`` (:func:`art_generalist.state.files.safe_load`).
Files that need full unpickling are only read when the caller gives their SHA-256
(:func:`read_unsafe`), checked on the very bytes then unpickled; the weights are then written once as
safetensors, a copy bound to the file's SHA-256 and size and to a hash of its own tensors, re-checked on use.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch

from art_generalist.state.files import PathLike, UnsafeCheckpointError, atomic_write_bytes, safe_load
from art_generalist.state.fingerprint import named_tensor_digest

logger = logging.getLogger(__name__)

#: safetensors metadata key written by :func:`read_unsafe`.
CONVERTED_KEY = "art_generalist_transfer"
MADRY_KEEP, MADRY_NORMALIZER = "module.model.", "module.normalizer."
MADRY_DROP = ("module.attacker.model.", "module.attacker.normalize.")


class CheckpointFormatError(ValueError):
    """The file or object is not a checkpoint this module can read (nothing in it ran)."""


@dataclass
class RawCheckpoint:
    """A flat ``{key: tensor}`` read from a file or object, before any key mapping."""

    tensors: dict[str, torch.Tensor]
    metadata: dict = field(default_factory=dict)
    export: bool = False
    #: a safetensors copy written by :func:`read_unsafe` (``metadata`` is its record)
    converted: bool = False


@dataclass
class Converted:
    """Keys mapped onto a plain model: the state dict, source mean/std, format and dropped keys."""

    state_dict: dict[str, torch.Tensor]
    format: str
    mean: Optional[tuple[float, ...]] = None
    std: Optional[tuple[float, ...]] = None
    dropped_keys: list[str] = field(default_factory=list)


# -- reading ------------------------------------------------------------------------------------------
def sha256_of(path: PathLike) -> str:
    """The file's SHA-256 as 64 lower-case hex digits."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _is_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 0 < n <= size - 8 and head[8:9] == b"{"


def read_file(path: PathLike) -> RawCheckpoint:
    """Tensors of a safetensors or weights-only pickle file; HTML pages and missing files are refused."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"`path_or_state_dict`: no checkpoint file at {str(path)!r} (a dead download "
                                f"link or a wrong path?).")
    with open(path, "rb") as fh:
        head = fh.read(512)
    stripped = head.lstrip()
    if stripped[:1] == b"<":
        raise CheckpointFormatError(
            f"{path} is an HTML page, not a checkpoint (its first bytes are {stripped[:40]!r}). Download sites "
            f"such as Google Drive return a confirmation or error page instead of the file; torch reports this as "
            f"\"invalid load key '<'\". Download the file again and check its SHA-256.")
    if _is_safetensors(head, path.stat().st_size):
        return _parse_safetensors(path.read_bytes(), path)
    try:
        obj = safe_load(path)  # nothing in the file runs
    except UnsafeCheckpointError as err:
        raise UnsafeCheckpointError(
            f"{err} If you trust this file, compute its SHA-256 (`sha256sum {path}`), compare it with the "
            f"publisher's, and pass that published value as `allow_unsafe_sha256=`: the file is checked against it "
            f"before anything is unpickled, and its weights are converted once to safetensors.") from None
    return RawCheckpoint(extract_tensors(obj, str(path)))


def _parse_safetensors(data: bytes, source: object = "the safetensors file") -> RawCheckpoint:
    """Tensors and metadata of a safetensors file's bytes (both from the same bytes, read once);
    the header and the metadata are size-checked before they are parsed (as exports are)."""
    from safetensors.torch import load

    from art_generalist.state.export import parse_metadata, safetensors_header_of

    try:
        meta = safetensors_header_of(data, source).get("__metadata__") or {}
    except ValueError as err:
        raise CheckpointFormatError(str(err)) from None
    if not isinstance(meta, dict):
        raise CheckpointFormatError(f"{source}: its safetensors metadata is not a JSON object.")
    tensors = load(data)
    if "art_generalist" in meta:
        return RawCheckpoint(tensors, parse_metadata(meta["art_generalist"], source), export=True)
    if CONVERTED_KEY in meta:
        return RawCheckpoint(tensors, parse_metadata(meta[CONVERTED_KEY], source), converted=True)
    return RawCheckpoint(tensors)


def extract_tensors(obj: Any, where: str = "the checkpoint") -> dict[str, torch.Tensor]:
    """The state dict inside a loaded checkpoint: ``obj['model']``, ``obj['state_dict']`` or ``obj``."""
    if not isinstance(obj, Mapping):
        raise CheckpointFormatError(f"{where} holds a {type(obj).__name__}, not a state dict or a dict of them.")
    for key in ("model", "state_dict"):
        inner = obj.get(key)
        if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return dict(inner)
        if isinstance(inner, torch.nn.Module):  # only reachable through the opt-in full unpickling
            return dict(inner.state_dict())
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj)
    raise CheckpointFormatError(
        f"{where} is neither a state dict nor a dict with a 'model' or 'state_dict' state dict; its top-level "
        f"keys are {sorted(map(str, obj))[:20]}.")


# -- key mapping --------------------------------------------------------------------------------------
def _stats(t: torch.Tensor) -> tuple[float, ...]:
    return tuple(float(v) for v in t.detach().flatten().tolist())


def convert_keys(tensors: Mapping[str, torch.Tensor]) -> Converted:
    """Map MadryLab / RobustBench / torchvision keys onto a plain model (prefixes only)."""
    keys = list(tensors)
    if any(k.startswith((MADRY_NORMALIZER,) + MADRY_DROP) for k in keys):  # else module.model.* is RobustBench
        out, dropped = {}, []
        mean = std = None
        for k, v in tensors.items():
            if k.startswith(MADRY_KEEP):
                out[k[len(MADRY_KEEP):]] = v
            elif k == MADRY_NORMALIZER + "new_mean":
                mean = _stats(v)
            elif k == MADRY_NORMALIZER + "new_std":
                std = _stats(v)
            elif k.startswith(MADRY_DROP):
                dropped.append(k)
            else:
                out[k] = v  # unknown: left for the strict key check to report
        return Converted(out, "madrylab", mean, std, dropped)
    out, fmt = dict(tensors), "torchvision"
    mean = std = None
    for prefix in ("module.", "model."):  # DataParallel, then RobustBench's normalize_model wrapper
        body = [k for k in out if not k.startswith("normalize.")]
        if body and all(k.startswith(prefix) for k in body):
            out = {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in out.items()}
            fmt = "robustbench"
    dropped = [k for k in out if k.startswith("normalize.")]
    for k in dropped:
        name = k[len("normalize."):]
        if name in ("mean", "new_mean"):
            mean = _stats(out[k])
        elif name in ("std", "new_std"):
            std = _stats(out[k])
    if dropped:
        fmt = "robustbench"
    return Converted({k: v for k, v in out.items() if k not in dropped}, fmt, mean, std, dropped)


# -- the opt-in path for files that need full unpickling -----------------------------------------------
def check_sha256(value: str, name: str = "allow_unsafe_sha256") -> str:
    """``value`` as 64 lower-case hex digits, or a ValueError naming ``name``."""
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", value.strip()):
        raise ValueError(f"`{name}` must be the file's SHA-256 as 64 hex digits, got {value!r}.")
    return value.strip().lower()


def converted_path_for(path: PathLike, converted_path: Optional[PathLike] = None) -> Path:
    """Where :func:`read_unsafe` writes the safetensors copy (default: beside the file)."""
    path = Path(path)
    return Path(converted_path) if converted_path is not None else path.with_name(path.name + ".safetensors")


def _verified_copy(target: Path, sha256: str, source: Path) -> Optional[RawCheckpoint]:
    """The copy's tensors when it was converted from a file with ``sha256`` (and the size and SHA-256 of
    ``source``, when present) and its tensors are those it recorded; ``None`` (with a warning) otherwise."""
    try:
        raw = _parse_safetensors(target.read_bytes(), target)
    except Exception as err:  # noqa: BLE001 - unreadable: not a copy this loader wrote
        raise CheckpointFormatError(f"{target} exists but is not a safetensors copy written by this loader "
                                    f"({err}); remove it or pass another `converted_path`.") from None
    if not raw.converted:
        raise CheckpointFormatError(f"{target} exists but was not written by this loader; remove it or pass "
                                    f"another `converted_path`.")
    rec = raw.metadata
    problem = None
    if rec.get("sha256") != sha256:
        problem = f"it records a source with SHA-256 {rec.get('sha256')!r}, not {sha256}"
    elif not isinstance(rec.get("size"), int) or not isinstance(rec.get("tensors_sha256"), str):
        problem = "it records no source size or tensor hash (an older or foreign copy)"
    elif rec["tensors_sha256"] != named_tensor_digest(raw.tensors):
        problem = "its tensors are not the ones it records (altered after conversion)"
    elif source.is_file() and source.stat().st_size != rec["size"]:
        problem = f"{source} has {source.stat().st_size} bytes, not the {rec['size']} it records"
    elif source.is_file() and sha256_of(source) != sha256:
        problem = f"{source} no longer has SHA-256 {sha256}"
    if problem is not None:
        logger.warning("not using the safetensors copy %s: %s; converting %s again", target, problem, source)
        return None
    if not source.is_file():
        logger.warning("using the safetensors copy %s: its source %s is absent, so only the copy's own record "
                       "and tensor hash were checked", target, source)
    logger.info("using the verified safetensors copy %s of %s", target, source)
    return raw


def read_unsafe(path: PathLike, sha256: str, converted_path: Optional[PathLike] = None) -> RawCheckpoint:
    """The weights of a trusted file that needs full unpickling, from its verified safetensors copy, else
    unpickled from the very bytes whose SHA-256 was checked (read once: a file swapped after the check is
    never unpickled), then written once as that copy (bound to the file's SHA-256 and size)."""
    from safetensors.torch import save

    sha256, path = check_sha256(sha256), Path(path)
    target = converted_path_for(path, converted_path)
    rejected = target.is_file()
    if rejected and (cached := _verified_copy(target, sha256, path)) is not None:
        return cached
    if not path.is_file():
        raise FileNotFoundError(f"`path_or_state_dict`: no checkpoint file at {str(path)!r}"
                                + (f" (and its copy {target} could not be trusted)." if rejected else "."))
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise ValueError(f"`allow_unsafe_sha256`: {path} has SHA-256 {actual}, not {sha256}; refusing to unpickle "
                         f"it (nothing in it ran).")
    logger.warning("fully unpickling %s (SHA-256 %s, opted in by the caller)", path, sha256)
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except Exception as err:
        raise CheckpointFormatError(
            f"{path} could not be unpickled even with the opt-in ({type(err).__name__}: {err}). Files pickled with "
            f"`dill` or referring to classes of a training script ('__main__') need that code importable.") from err
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in extract_tensors(obj, str(path)).items()}
    meta = {"sha256": sha256, "size": len(data), "converted_from": path.name,
            "tensors_sha256": named_tensor_digest(tensors)}
    atomic_write_bytes(target, save(tensors, metadata={CONVERTED_KEY: json.dumps(meta)}))
    logger.info("wrote the weights of %s as safetensors to %s", path, target)
    return RawCheckpoint(tensors, meta, converted=True)


def read_source(source: Union[PathLike, Mapping], allow_unsafe_sha256: Optional[str] = None,
                converted_path: Optional[PathLike] = None) -> RawCheckpoint:
    """A checkpoint path, or an in-memory state dict / checkpoint dict, as a :class:`RawCheckpoint`."""
    if isinstance(source, Mapping):
        return RawCheckpoint(extract_tensors(source, "`path_or_state_dict`"))
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"`path_or_state_dict` must be a path or a state dict, got {type(source).__name__}.")
    if allow_unsafe_sha256 is not None:
        return read_unsafe(source, allow_unsafe_sha256, converted_path)
    return read_file(source)
