"""``load_source``: a robust source model (torchvision or registry architecture) from any supported format.

Example::

    src = load_source("imagenet_l2_3_0.ckpt", "resnet50", num_classes=10)   # MadryLab format
    clf = PyTorchClassifier(src.model, ..., preprocessing=src.preprocessing)
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np
import torch
from torch import nn

from art_generalist.state.files import PathLike
from art_generalist.transfer.formats import Converted, RawCheckpoint, convert_keys, read_source
from art_generalist.transfer.heads import find_head, replace_head

logger = logging.getLogger(__name__)

TORCHVISION_ARCHS = ("resnet18", "resnet50", "wide_resnet50_2")
#: Prefix that selects the package's registry model when its name is also a torchvision name.
REGISTRY_PREFIX = "registry:"


class KeyMismatchError(ValueError):
    """The checkpoint's keys or shapes do not match the architecture (nothing was loaded)."""


@dataclass
class SourceModel:
    """A source model with its weights and what the checkpoint said about it.

    :ivar model: the architecture with the source weights (and the new head if ``num_classes`` was given).
    :ivar arch: the architecture name.
    :ivar format: ``"torchvision"``, ``"madrylab"``, ``"robustbench"`` or ``"art-generalist-export"``.
    :ivar mean, std: the source normalisation (per channel, input units) when the checkpoint carries
        it, else ``None``.
    :ivar dropped_keys: checkpoint keys deliberately not loaded (attacker copy, normaliser).
    """

    model: nn.Module
    arch: str
    format: str
    mean: Optional[tuple[float, ...]] = None
    std: Optional[tuple[float, ...]] = None
    dropped_keys: list[str] = field(default_factory=list)

    @property
    def preprocessing(self) -> Optional[tuple[np.ndarray, np.ndarray]]:
        """``(mean, std)`` for ART's ``PyTorchClassifier(preprocessing=...)``, or ``None``."""
        if self.mean is None or self.std is None:
            return None
        shape = (-1, 1, 1) if len(self.mean) > 1 else (-1,)
        return (np.asarray(self.mean, np.float32).reshape(shape), np.asarray(self.std, np.float32).reshape(shape))


def list_architectures() -> list[str]:
    """torchvision names, then the registry's (prefixed where the name is taken by torchvision)."""
    from art_generalist.models import list_models

    return list(TORCHVISION_ARCHS) + [n if n not in TORCHVISION_ARCHS else REGISTRY_PREFIX + n for n in list_models()]


def build_architecture(arch: str, num_classes: int = 1000, in_channels: int = 3, input_size: int = 32) -> nn.Module:
    """A randomly initialised ``arch``: torchvision ``resnet18`` / ``resnet50`` / ``wide_resnet50_2``,
    or a registry model (``"smallcnn"``, ``"registry:resnet18"``, ...; ``in_channels`` and
    ``input_size`` size those)."""
    import torchvision

    from art_generalist.models import get_model, list_models

    if not isinstance(arch, str):
        raise ValueError(f"`arch` must be a string, got {arch!r}.")
    if arch in TORCHVISION_ARCHS:
        if in_channels != 3:
            raise ValueError(f"`in_channels`: torchvision {arch} takes 3 channels, got {in_channels}.")
        return getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    name = arch[len(REGISTRY_PREFIX):] if arch.startswith(REGISTRY_PREFIX) else arch
    if name in list_models():
        return get_model(name, in_channels, num_classes, input_size)
    raise ValueError(f"`arch`: unknown architecture {arch!r}; known: {', '.join(list_architectures())}.")


def _source_classes(arch: str, state: Mapping[str, torch.Tensor], in_channels: int, input_size: int) -> int:
    with torch.device("meta"):
        probe = build_architecture(arch, 1000, in_channels, input_size)
    name, _ = find_head(probe)
    weight = state.get(f"{name}.weight")
    return int(weight.shape[0]) if weight is not None and weight.dim() == 2 else 1000


def _mismatch(model: nn.Module, state: Mapping[str, torch.Tensor]) -> tuple[list, list, list]:
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in own.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    return missing, unexpected, shapes


def _fitting_archs(state: Mapping[str, torch.Tensor], in_channels: int, input_size: int) -> list[str]:
    """Known architectures the state dict would load into (built on the meta device: no memory)."""
    fits = []
    for arch in list_architectures():
        try:
            with torch.device("meta"):
                probe = build_architecture(arch, _source_classes(arch, state, in_channels, input_size),
                                           in_channels, input_size)
        except Exception:  # noqa: BLE001 - a registry model that cannot take these sizes
            continue
        if not any(_mismatch(probe, state)):
            fits.append(arch)
    return fits


def _short(items: list, limit: int = 10) -> str:
    return f"{items[:limit]}" + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _load_strict(model: nn.Module, arch: str, state: Mapping[str, torch.Tensor], fmt: str,
                 in_channels: int, input_size: int) -> None:
    missing, unexpected, shapes = _mismatch(model, state)
    if missing or unexpected or shapes:
        fits = _fitting_archs(state, in_channels, input_size)
        hint = (f" The checkpoint fits {fits}: was it saved for another architecture?" if fits
                else " Was it saved for another architecture, or with key prefixes this loader does not know?")
        raise KeyMismatchError(
            f"The {fmt} checkpoint does not match architecture {arch!r}: {len(missing)} missing key(s) "
            f"{_short(missing)}, {len(unexpected)} unexpected key(s) {_short(unexpected)}, {len(shapes)} shape "
            f"mismatch(es) (key, checkpoint, model) {_short(shapes)}.{hint} Nothing was loaded.")
    model.load_state_dict(dict(state), strict=True)


def _export_arch(raw: RawCheckpoint, arch: Optional[str]) -> tuple[str, int, int, int]:
    spec = (raw.metadata.get("architecture") or {}).get("registry")
    if arch is None and not spec:
        raise ValueError("`arch`: this export was not built from the model registry; pass the architecture name.")
    if spec and (arch is None or arch in (spec["name"], REGISTRY_PREFIX + spec["name"])):
        return REGISTRY_PREFIX + spec["name"], spec["num_classes"], spec["in_channels"], spec["input_size"]
    return str(arch), -1, -1, -1


def load_source(path_or_state_dict: Union[PathLike, Mapping], arch: Optional[str], num_classes: Optional[int] = None,
                hidden: tuple[int, ...] = (), in_channels: int = 3, input_size: int = 32,
                allow_unsafe_sha256: Optional[str] = None, converted_path: Optional[PathLike] = None) -> SourceModel:
    """Build ``arch`` and load the source weights from a file or an in-memory (state) dict.

    :param path_or_state_dict: a checkpoint file (torch weights-only pickle or safetensors) or a dict.
    :param arch: ``"resnet18"``, ``"resnet50"``, ``"wide_resnet50_2"`` (torchvision) or a registry
        model (``"registry:resnet18"`` for the package's CIFAR ResNet-18); ``None`` for this
        package's exports of registry models.
    :param num_classes: when given, the source head is replaced by a new one for this many
        classes (see :func:`~art_generalist.transfer.heads.replace_head`, ``hidden`` too).
    :param in_channels, input_size: the input of registry models (torchvision models take 3 channels).
    :param allow_unsafe_sha256: opt-in for files that need full unpickling (e.g. MadryLab's dill
        pickles): the file's SHA-256, checked on the bytes that are then unpickled (read once); the
        weights are then written once as safetensors (``converted_path``, default ``<file>.safetensors``)
        and later calls read that copy while it still records this SHA-256 and the file's size, the
        file (when present) still has them, and its tensors hash to what it records; otherwise it is
        converted again, with a warning.
    :raises FileNotFoundError, CheckpointFormatError, UnsafeCheckpointError, KeyMismatchError, ValueError:
        with the offending argument and value named.
    """
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                    or num_classes < 1):
        raise ValueError(f"`num_classes` must be None or an int >= 1, got {num_classes!r}.")
    raw = read_source(path_or_state_dict, allow_unsafe_sha256, converted_path)
    if raw.export:
        arch, src_classes, in_channels_x, input_size_x = _export_arch(raw, arch)
        if src_classes > 0:
            in_channels, input_size = in_channels_x, input_size_x
        prep = raw.metadata.get("preprocessing") or {}
        conv = Converted(dict(raw.tensors), "art-generalist-export", tuple(prep["mean"]) if "mean" in prep else None,
                         tuple(prep["std"]) if "std" in prep else None)
    else:
        if arch is None:
            raise ValueError("`arch`: None is only accepted for this package's safetensors exports; pass one of "
                             f"{', '.join(list_architectures())}.")
        conv, src_classes = convert_keys(raw.tensors), -1
    if src_classes < 0:
        src_classes = _source_classes(arch, conv.state_dict, in_channels, input_size)
    model = build_architecture(arch, src_classes, in_channels, input_size)
    _load_strict(model, arch, conv.state_dict, conv.format, in_channels, input_size)
    if num_classes is not None:
        replace_head(model, num_classes, hidden)
    where = os.fspath(path_or_state_dict) if not isinstance(path_or_state_dict, Mapping) else "a state dict"
    logger.info("loaded %s source %s from %s (dropped %d keys)", conv.format, arch, where, len(conv.dropped_keys))
    return SourceModel(model, arch, conv.format, conv.mean, conv.std, list(conv.dropped_keys))
