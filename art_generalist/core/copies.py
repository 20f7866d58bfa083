"""Copies of models that stay the same function: ART's Hugging Face wrapper rebuilt on the copy."""
from __future__ import annotations

import copy
import functools
from typing import Any

import torch
from torch import nn


def copy_model(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose ``forward`` is its own.

    ART's ``HuggingFaceClassifierPyTorch`` sets ``model.forward`` to a wrapper of the original
    bound method (to return ``.logits``); a plain ``deepcopy`` keeps calling the original model.
    Such wrappers are rebuilt on the copy; any other ``forward`` set on an instance is refused.
    """
    clone = copy.deepcopy(model)
    for (name, orig), (_, sub) in zip(model.named_modules(), clone.named_modules()):
        patched = orig.__dict__.get("forward")
        if patched is None:
            continue
        layers, inner = 0, patched
        while hasattr(inner, "__wrapped__") and getattr(inner, "__self__", None) is not orig:
            inner, layers = inner.__wrapped__, layers + 1
        if getattr(inner, "__self__", None) is not orig or not _is_logits_wrapper(patched):
            raise ValueError(f"The model's module {name or type(orig).__name__!r} has a `forward` set on the "
                             f"instance (not ART's Hugging Face wrapper), which cannot be copied safely for the "
                             f"base learners. Define forward in the module's class.")
        forward = inner.__func__.__get__(sub)
        for _ in range(layers):
            forward = _logits_of(forward)
        sub.forward = forward
    return clone


def _is_logits_wrapper(function: Any) -> bool:
    """ART's Hugging Face wrapper (``run`` in ``hugging_face.py``) or ours (:func:`_logits_of`)."""
    code = getattr(function, "__code__", None)
    if code is None:
        return False
    if code is _LOGITS_CODE:
        return True
    return code.co_name == "run" and code.co_filename.replace("\\", "/").endswith("classification/hugging_face.py")


def _logits_of(function: Any) -> Any:
    """``function``'s outputs, or their ``.logits`` (what ART's Hugging Face wrapper returns)."""
    @functools.wraps(function)
    def prefix_function(*args: Any, **kwargs: Any) -> Any:
        out = function(*args, **kwargs)
        return out if isinstance(out, torch.Tensor) else out.logits
    return prefix_function


_LOGITS_CODE = _logits_of(lambda: None).__code__
