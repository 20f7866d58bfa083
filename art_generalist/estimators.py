"""Glue to ART's ``PyTorchClassifier``: read its input pipeline, clone it for new models."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Optional

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from art.estimators.classification import PyTorchClassifier


def mean_std(classifier: "PyTorchClassifier") -> tuple[np.ndarray, np.ndarray]:
    """The (mean, std) standardisation of an ART classifier; other preprocessing is refused."""
    ops = list(classifier.preprocessing_operations or [])
    if not ops:
        return np.zeros(1, np.float32), np.ones(1, np.float32)
    if len(ops) == 1 and hasattr(ops[0], "mean") and hasattr(ops[0], "std"):
        return (np.asarray(ops[0].mean, np.float32).reshape(-1), np.asarray(ops[0].std, np.float32).reshape(-1))
    names = [type(op).__name__ for op in ops]
    raise ValueError(
        f"Only mean/std `preprocessing` is supported by the training attack, got preprocessing "
        f"operations {names}. Remove `preprocessing_defences` from the classifier."
    )


def clip_range(classifier: "PyTorchClassifier") -> tuple[float, float]:
    """``clip_values`` as floats; bounded inputs are required for PGD."""
    if classifier.clip_values is None:
        raise ValueError("The classifier has no `clip_values`; PGD training needs a bounded input "
                         "range, e.g. clip_values=(0.0, 1.0).")
    lo, hi = np.asarray(classifier.clip_values, dtype=np.float64).reshape(-1)[:2]
    if not hi > lo:
        raise ValueError(f"`clip_values` must satisfy min < max, got {classifier.clip_values}.")
    return float(lo), float(hi)


def clone_optimizer(optimizer: Optional[torch.optim.Optimizer], model: nn.Module,
                    params: Optional[Iterable[nn.Parameter]] = None) -> Optional[torch.optim.Optimizer]:
    """A fresh optimizer of the same class and hyper-parameters (first group) on ``params``
    (default: all of ``model``'s parameters).

    Unlike ART's ``clone_for_refitting`` this keeps the weights; the state (momentum) is new.
    """
    if optimizer is None:
        return None
    group = optimizer.param_groups[0]
    kwargs = {k: group[k] for k in optimizer.defaults if k in group and k != "params"}
    return type(optimizer)(model.parameters() if params is None else params, **kwargs)


def make_classifier(template: "PyTorchClassifier", model: nn.Module,
                    optimizer: Optional[torch.optim.Optimizer]) -> "PyTorchClassifier":
    """An ART ``PyTorchClassifier`` for ``model`` with ``template``'s loss, shape, classes,
    clip values, preprocessing and device."""
    from art.estimators.classification import PyTorchClassifier

    mean, std = (preprocessing_value(a) for a in mean_std(template))
    return PyTorchClassifier(
        model=model, loss=template.loss, input_shape=template.input_shape, nb_classes=template.nb_classes,
        optimizer=optimizer, channels_first=template.channels_first, clip_values=template.clip_values,
        preprocessing=(mean, std), device_type="gpu" if template.device.type == "cuda" else "cpu",
    )


def preprocessing_value(a: np.ndarray) -> Any:
    """ART takes a float for one channel's statistic and an array for several."""
    a = np.asarray(a, np.float32)
    return float(a.reshape(-1)[0]) if a.size == 1 else a


def build_classifier(model: nn.Module, data: Any, lr: float = 0.05, momentum: float = 0.9,
                     weight_decay: float = 5e-4, device: str = "cpu") -> "PyTorchClassifier":
    """An ART classifier for ``model`` on data set ``data`` (an :class:`~art_generalist.data.Dataset`:
    its mean/std, input shape and classes) with SGD and clip values (0, 1): the classifier that
    the benchmark, the CLI, the scripts and the examples all start from."""
    from art.estimators.classification import PyTorchClassifier

    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    return PyTorchClassifier(model, loss=nn.CrossEntropyLoss(), optimizer=opt, input_shape=data.input_shape,
                             nb_classes=data.nb_classes, clip_values=(0.0, 1.0),
                             preprocessing=(preprocessing_value(data.mean), preprocessing_value(data.std)),
                             device_type="gpu" if str(device).startswith("cuda") else "cpu")
