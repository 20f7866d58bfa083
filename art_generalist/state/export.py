"""Load a model written by ``trainer.export(path)`` back into an ART ``PyTorchClassifier``."""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

import numpy as np
from torch import nn

from art_generalist.estimators import preprocessing_value
from art_generalist.state.files import PathLike

if TYPE_CHECKING:  # pragma: no cover
    from art.estimators.classification import PyTorchClassifier


#: The largest safetensors header read (the tensor index plus the metadata, JSON-escaped): its
#: length, the file's first 8 bytes, is checked before anything else is read or parsed.
MAX_HEADER_BYTES = 8 * 2**20
#: The largest art-generalist JSON metadata parsed (an export's is a few KB; an evaluation report
#: with per-example flags of 10,000 points some 300 KB).
MAX_METADATA_BYTES = 2**20


def safetensors_header(path: PathLike) -> dict:
    """The JSON header of a safetensors file, refused before it is read when its length (the first
    8 bytes) is over :data:`MAX_HEADER_BYTES` or past the end of the file."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        return _parse_header(fh.read(8), size, fh.read, path)


def safetensors_header_of(data: bytes, source: object) -> dict:
    """:func:`safetensors_header` of a file's bytes already in memory (``source`` names it)."""
    return _parse_header(data[:8], len(data), lambda n: data[8:8 + n], source)


def _parse_header(head: bytes, size: int, read: Callable[[int], bytes], source: object) -> dict:
    if len(head) < 8:
        raise ValueError(f"{source} is not a safetensors file ({size} bytes).")
    (n,) = struct.unpack("<Q", head)
    if n > MAX_HEADER_BYTES:
        raise ValueError(f"{source}: its safetensors header claims {n} bytes, over the cap of {MAX_HEADER_BYTES} "
                         f"bytes; refusing to read it (not an export of this package, or damaged).")
    if 8 + n > size:
        raise ValueError(f"{source}: its safetensors header claims {n} bytes but the file has {size}: cut short "
                         f"or not a safetensors file.")
    try:
        header = json.loads(read(n))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{source}: its safetensors header is not JSON ({err}).") from None
    if not isinstance(header, dict):
        raise ValueError(f"{source}: its safetensors header is not a JSON object.")
    return header


def parse_metadata(text: str, source: object) -> dict:
    """``json.loads`` of art-generalist metadata, refused unparsed when over :data:`MAX_METADATA_BYTES`
    (``source`` names the file in the messages; for any reader of an export's metadata)."""
    size = len(text.encode("utf-8"))
    if size > MAX_METADATA_BYTES:
        raise ValueError(f"{source}: its metadata is {size} bytes, over the cap of {MAX_METADATA_BYTES} bytes; "
                         f"refusing to parse it (not an export of this package, or damaged).")
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{source}: its metadata is not JSON ({err}).") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{source}: its metadata is not a JSON object.")
    return meta


def read_metadata(path: PathLike) -> dict:
    """The JSON metadata stored inside the safetensors file (the ``.json`` beside it is a copy),
    its size checked against :data:`MAX_HEADER_BYTES` and :data:`MAX_METADATA_BYTES` before parsing."""
    text = (safetensors_header(path).get("__metadata__") or {}).get("art_generalist")
    if not isinstance(text, str):
        raise ValueError(f"{path} has no art-generalist metadata; was it written by `export`?")
    return parse_metadata(text, path)


def load_exported(path: PathLike, model: Optional[nn.Module] = None, device_type: str = "cpu") -> "PyTorchClassifier":
    """Rebuild the exported classifier: weights (safetensors, no pickle), preprocessing, clip values.

    :param model: an instance of the exported architecture; optional when the model was built by
        :func:`art_generalist.models.get_model`, whose name and arguments the export records.
    """
    from art.estimators.classification import PyTorchClassifier
    from safetensors.torch import load_file

    from art_generalist.models import get_model

    path = Path(path)
    meta = read_metadata(path)
    arch = meta["architecture"]
    if model is None:
        if not arch.get("registry"):
            raise ValueError(f"The export's architecture {arch['class']} is not from the model registry: "
                             f"pass `model=` an instance of it.")
        model = get_model(**arch["registry"])
    model.load_state_dict(load_file(str(path)), strict=True)
    prep = meta["preprocessing"]
    mean, std = (preprocessing_value(np.asarray(prep[k])) for k in ("mean", "std"))
    return PyTorchClassifier(model, loss=nn.CrossEntropyLoss(), input_shape=tuple(meta["input_shape"]),
                             nb_classes=meta["nb_classes"], clip_values=tuple(meta["clip_values"]),
                             preprocessing=(mean, std), channels_first=bool(meta.get("channels_first", True)),
                             device_type=device_type)
