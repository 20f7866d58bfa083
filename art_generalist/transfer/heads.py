"""Find and replace the classification head of a source model; freeze its backbone.

The head is torchvision's ``fc`` (ResNets), ``classifier`` (VGG, DenseNet, MobileNet, ...) or
``head`` (ViT-style) attribute when it is or ends in an ``nn.Linear``; otherwise the model's last
``nn.Linear`` in registration order (the package's registry models).
"""
from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any, Iterable, Optional

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from art_generalist.train.plugins import Plugin

logger = logging.getLogger(__name__)

HEAD_ATTRIBUTES = ("fc", "classifier", "head")


class HeadNotFoundError(ValueError):
    """The model has no ``fc`` / ``classifier`` / ``head`` Linear and no ``nn.Linear`` at all."""


def _last_linear(module: nn.Module, prefix: str) -> tuple[str, nn.Linear] | None:
    found = None
    for name, sub in module.named_modules(prefix=prefix):
        if isinstance(sub, nn.Linear):
            found = (name, sub)
    return found


def find_head(model: nn.Module) -> tuple[str, nn.Linear]:
    """``(qualified name, module)`` of the head's final ``nn.Linear``.

    Raises:
        HeadNotFoundError: when the model has no ``nn.Linear``.
    """
    for attr in HEAD_ATTRIBUTES:
        sub = getattr(model, attr, None)
        if isinstance(sub, nn.Module):
            found = _last_linear(sub, attr)
            if found is not None:
                return found
    found = _last_linear(model, "")
    if found is None:
        raise HeadNotFoundError(
            f"`model`: cannot find the classification head of {type(model).__name__}: it has no "
            f"{'/'.join(HEAD_ATTRIBUTES)} attribute holding an nn.Linear and no nn.Linear at all.")
    return found


def head_module_name(model: nn.Module) -> str:
    """The top-level name of what :func:`replace_head` replaces (``fc``, ``classifier.6``, ...)."""
    return find_head(model)[0]


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def replace_head(model: nn.Module, num_classes: int, hidden: Sequence[int] = ()) -> nn.Module:
    """Replace the head's final Linear by a new ``Linear(in_features, num_classes)``, in place.

    :param num_classes: classes of the target task (an int >= 1).
    :param hidden: widths of extra ReLU-Linear layers before the output layer, as the paper
        code's ``--additional-hidden`` (e.g. ``(512,)``).
    :return: ``model`` (modified in place; the new layers are on the old head's device and dtype).
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"`num_classes` must be an int >= 1, got {num_classes!r}.")
    hidden = tuple(hidden)
    for width in hidden:
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"`hidden` must hold ints >= 1, got {hidden!r}.")
    name, old = find_head(model)
    layers: list[nn.Module] = []
    width = old.in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
        width = h
    layers.append(nn.Linear(width, num_classes))
    new = layers[0] if len(layers) == 1 else nn.Sequential(*layers)
    new = new.to(device=old.weight.device, dtype=old.weight.dtype)
    new.transfer_head = True  # marks the whole new head (hidden layers included) for :func:`freeze`
    _set_submodule(model, name, new)
    logger.info("replaced head %s (%d -> %d) by %s", name, old.in_features, old.out_features, new)
    return model


# -- freezing -------------------------------------------------------------------------------------------
MODES = ("fixed-feature", "full")


def _head_name(model: nn.Module) -> str:
    for name, sub in model.named_modules():
        if getattr(sub, "transfer_head", False):
            return name
    return find_head(model)[0]


def _under(name: str, root: str) -> bool:
    return name == root or name.startswith(root + ".")


def _frozen_modules(model: nn.Module, mode: str, level: Optional[int]) -> set[str]:
    names = [n for n, _ in model.named_modules() if n]
    if mode == "full":
        return set()
    if level is None:
        head = _head_name(model)
        return {n for n in names if not _under(n, head) and not _under(head, n)}
    layer = f"layer{level}"
    inside = [i for i, n in enumerate(names) if _under(n, layer)]
    if not inside:
        levels = sorted({int(m.group(1)) for n in names if (m := re.fullmatch(r"layer(\d+)", n))})
        raise ValueError(f"`level`: {type(model).__name__} has no module {layer!r} (freeze levels it has: "
                         f"{levels or 'none'}; -1 means full fine-tuning).")
    return set(names[:inside[-1] + 1])


def _keep_eval(module: nn.Module, args: Any) -> None:
    """Forward pre-hook of a frozen BatchNorm: normalise with (and never update) its running statistics."""
    if getattr(module, "frozen_stats", False):
        module.training = False


def freeze(model: nn.Module, mode: str = "fixed-feature", level: Optional[int] = None,
           update_bn_stats: bool = False) -> list[nn.Parameter]:
    """Freeze the backbone as the paper code's ``--freeze-level``, in place; return the parameters to train.

    :param mode: ``"fixed-feature"`` trains only the head (the module :func:`replace_head` put in,
        else the last Linear found by :func:`find_head`); ``"full"`` trains everything.
    :param level: ``1``-``4`` freezes every module up to and including ``layer{level}`` (module
        registration order, as the paper code); ``-1`` means full. ``level=4`` on a ResNet is the
        paper's fixed-feature setting. Needs ``mode="fixed-feature"`` (or ``-1`` with ``"full"``).
    :param update_bn_stats: ``False`` (default): BatchNorm layers of the frozen part keep their
        running statistics, even when the model is put in train mode (a forward pre-hook switches
        them to eval). ``True`` reproduces the paper code, which updates them.
    """
    if mode not in MODES:
        raise ValueError(f"`mode` must be one of {MODES}, got {mode!r}.")
    if level is not None and (isinstance(level, bool) or not isinstance(level, int) or (level < 1 and level != -1)):
        raise ValueError(f"`level` must be None, -1 or an int >= 1, got {level!r}.")
    if level == -1:
        mode, level = "full", None
    elif level is not None and mode == "full":
        raise ValueError(f"`level`={level} freezes part of the model, which contradicts `mode`='full'.")
    frozen = _frozen_modules(model, mode, level)
    for name, sub in model.named_modules():
        is_frozen = name in frozen
        for p in sub.parameters(recurse=False):
            p.requires_grad_(not is_frozen)
        if isinstance(sub, _BatchNorm):
            sub.frozen_stats = is_frozen and not update_bn_stats
            if not getattr(sub, "keep_eval_hook", False):
                sub.register_forward_pre_hook(_keep_eval)
                sub.keep_eval_hook = True
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError(f"`mode`={mode!r}, `level`={level!r} leave no trainable parameter in {type(model).__name__}.")
    logger.info("freeze(mode=%s, level=%s): %d of %d parameter tensors train", mode, level, len(trainable),
                len(list(model.parameters())))
    return trainable


class TransferFreeze(Plugin):
    """Plug-in that applies :func:`freeze` to the trainer's copy of the model (``trainable``).

    Frozen parameters get no optimizer state and no weight decay; frozen BatchNorm layers stay in
    eval mode through ``Learner.step``'s ``train()`` unless ``update_bn_stats=True``.
    """

    name = "transfer_freeze"

    def __init__(self, mode: str = "fixed-feature", level: Optional[int] = None, update_bn_stats: bool = False) -> None:
        if mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}, got {mode!r}.")
        self.mode, self.level, self.update_bn_stats = mode, level, bool(update_bn_stats)

    def trainable(self, name: str, model: nn.Module) -> Optional[Iterable[nn.Parameter]]:
        return freeze(model, self.mode, self.level, self.update_bn_stats)

    def export_metadata(self) -> dict:
        return {"mode": self.mode, "level": self.level, "update_bn_stats": self.update_bn_stats}

    def __repr__(self) -> str:
        return f"TransferFreeze(mode={self.mode!r}, level={self.level!r}, update_bn_stats={self.update_bn_stats})"
