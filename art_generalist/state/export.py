"""Load a model written by ``trainer.export(path)`` back into an ART ``PyTorchClassifier``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np
from torch import nn

from art_generalist.estimators import preprocessing_value
from art_generalist.state.files import PathLike

if TYPE_CHECKING:  # pragma: no cover
    from art.estimators.classification import PyTorchClassifier


def read_metadata(path: PathLike) -> dict:
    """The JSON metadata stored inside the safetensors file (the ``.json`` beside it is a copy)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        text = (fh.metadata() or {}).get("art_generalist")
    if text is None:
        raise ValueError(f"{path} has no art-generalist metadata; was it written by `export`?")
    return json.loads(text)


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
