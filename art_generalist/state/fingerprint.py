"""What a run is: the fingerprint a checkpoint records so that a resume refuses another run.

A run is its trainer (the settings of :meth:`TrainerState.settings`, plus what they do not
name: every model's structure (module types, parameter and buffer names, shapes and dtypes) and
every learner's optimizer hyper-parameters, group by group, with the lr as it was when the
trainer was built) and its data (the number of examples, the batch size, the shuffling and a
SHA-256 of the training arrays and labels; for a ``DataLoader`` or an ART ``DataGenerator``,
which cannot be hashed up front, their lengths and batch sizes). :func:`differences` lists what
differs between two fingerprints, field by field, for the message that refuses the resume.
"""
from __future__ import annotations

import hashlib
from typing import Any, Iterable, Mapping, Optional

import torch
from torch import nn


class OtherRunError(ValueError):
    """A resume found the files of another run (settings, model, optimizer or data differ)."""


#: optimizer group keys that change speed, never results
_SPEED_ONLY = {"params", "foreach", "fused", "capturable", "differentiable", "initial_lr", "lr"}


def model_structure(model: nn.Module) -> list[str]:
    """One line per module (``name:Type``) and per parameter and buffer (``name:shape:dtype``)."""
    lines = [f"{name or '<root>'}:{type(m).__module__}.{type(m).__qualname__}" for name, m in model.named_modules()]
    lines += [f"param {name}:{list(p.shape)}:{p.dtype}" for name, p in model.named_parameters()]
    lines += [f"buffer {name}:{list(b.shape)}:{b.dtype}" for name, b in model.named_buffers()]
    return lines


def optimizer_hparams(optimizer: torch.optim.Optimizer, base_lrs: Iterable[float]) -> list[dict]:
    """Per parameter group: the optimizer class, the group's size and its hyper-parameters, the
    lr being the group's lr before any schedule (``base_lrs``)."""
    groups = []
    for group, lr in zip(optimizer.param_groups, base_lrs):
        entry = {"class": type(optimizer).__name__, "params": sum(p.numel() for p in group["params"]),
                 "lr": float(lr)}
        for key, value in sorted(group.items()):
            if key not in _SPEED_ONLY:
                entry[key] = _plain(value)
        groups.append(entry)
    return groups


def _hash_tensor(h: "hashlib._Hash", t: torch.Tensor) -> None:
    t = t.detach().contiguous().cpu()
    h.update(f"{list(t.shape)}:{t.dtype};".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def tensor_digest(*tensors: torch.Tensor) -> str:
    """SHA-256 of the tensors' shapes, dtypes and bytes (one copy to the host each)."""
    h = hashlib.sha256()
    for t in tensors:
        _hash_tensor(h, t)
    return h.hexdigest()


def named_tensor_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """:func:`tensor_digest` of a state dict: each name, then its tensor, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode() + b"\0")
        _hash_tensor(h, tensors[name])
    return h.hexdigest()


def array_data(u: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool, drop_last: bool) -> dict:
    return {"kind": "arrays", "examples": int(len(u)), "batch_size": int(batch_size), "shuffle": bool(shuffle),
            "drop_last": bool(drop_last), "sha256": tensor_digest(u, y)}


def iterable_data(kind: str, obj: Any, nb_batches: int) -> dict:
    dataset = getattr(obj, "dataset", None)
    return {"kind": kind, "batches": int(nb_batches), "batch_size": getattr(obj, "batch_size", None),
            "examples": getattr(obj, "size", None) if dataset is None else _len(dataset),
            "dataset": None if dataset is None else f"{type(dataset).__module__}.{type(dataset).__qualname__}"}


def differences(stored: Optional[dict], now: dict, prefix: str = "", stored_in: str = "checkpoint") -> list[str]:
    """``field: checkpoint X, now Y`` for every leaf that differs (structure lists: the first
    differing line and the counts); ``stored_in`` names where ``stored`` was read (``results.json``)."""
    if stored is None:
        return []
    out: list[str] = []
    for key in sorted(set(stored) | set(now), key=str):
        a, b, name = stored.get(key), now.get(key), f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{name}.", stored_in)
        elif isinstance(a, list) and isinstance(b, list) and a and isinstance(a[0], str) and a != b:
            first = next((i for i, (p, q) in enumerate(zip(a, b)) if p != q), min(len(a), len(b)))
            out.append(f"{name}: line {first} is {_at(a, first)!r} in the {stored_in}, {_at(b, first)!r} now "
                       f"({len(a)} vs {len(b)} lines)")
        elif a != b:
            out.append(f"{name}: {stored_in} {a!r}, now {b!r}")
    return out


def _at(lines: list, i: int) -> Any:
    return lines[i] if i < len(lines) else None


def _len(obj: Any) -> Optional[int]:
    try:
        return len(obj)
    except TypeError:
        return None


def _plain(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)
