"""Glue to ART's ``PyTorchClassifier``: read its input pipeline, clone it for new models."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional

import numpy as np
import torch
from torch import nn

from art_generalist.core.copies import copy_model  # noqa: F401  (the ART glue's name for it)

if TYPE_CHECKING:  # pragma: no cover
    from art.estimators.classification import PyTorchClassifier


def check_estimator(classifier: Any) -> None:
    """Refuse what is not an ART PyTorch classifier, with the one-line wrap."""
    from art.estimators.classification import PyTorchClassifier

    if isinstance(classifier, nn.Module):
        raise TypeError("Expected an ART PyTorchClassifier, got a bare torch module. Wrap it: "
                        "PyTorchClassifier(model, loss=nn.CrossEntropyLoss(), optimizer=opt, input_shape=(C, H, W), "
                        "nb_classes=K, clip_values=(0, 1)).")
    if not isinstance(classifier, PyTorchClassifier):
        raise TypeError(f"Expected an ART PyTorchClassifier (or a subclass such as HuggingFaceClassifierPyTorch), "
                        f"got {type(classifier).__name__}.")


@torch.no_grad()
def check_same_function(classifier: "PyTorchClassifier", space: nn.Module, n: int = 2) -> None:
    """Refuse a classifier whose logits, computed as the trainer computes them (clip range,
    mean/std, processor, model), differ from ART's own (``_apply_preprocessing`` then the
    model wrapper, as ``predict`` does before postprocessing), on random inputs in the clip range.

    Skipped when ART's own forward pass is not deterministic in eval mode, or under bf16 autocast.
    """
    if getattr(space, "amp", False):
        return
    gen = torch.Generator().manual_seed(0)  # the global RNG streams stay untouched
    u = torch.rand((n, *classifier.input_shape), generator=gen)
    model = classifier.model
    was_training = model.training
    model.eval()
    try:
        x = space.from_unit(u).numpy()
        x_pre, _ = classifier._apply_preprocessing(x, y=None, fit=False)
        art = [classifier._model(torch.as_tensor(x_pre, device=classifier.device))[-1].float().cpu()
               for _ in range(2)]
        ours = space(u.to(classifier.device)).float().cpu()
    finally:
        model.train(was_training)
    if art[0].shape != ours.shape or not torch.equal(art[0], art[1]):
        return  # a stochastic model in eval mode: no reference to compare with
    diff = float((art[0] - ours).abs().max())
    if diff > 1e-4 * max(1.0, float(art[0].abs().max())):
        raise ValueError(f"The trainer's view of the classifier (clip_values, mean/std preprocessing, processor) "
                         f"computes logits that differ from ART's own by up to {diff:.3g} on the same inputs, so "
                         f"it would train and attack another function than the one ART predicts with. Check the "
                         f"preprocessing shapes and channels_first.")


def mean_std(classifier: "PyTorchClassifier") -> tuple[np.ndarray, np.ndarray]:
    """The (mean, std) standardisation of an ART classifier, shaped to broadcast against one
    example exactly as ART's ``StandardisationMeanStd`` does; other preprocessing is refused.

    A per-channel statistic of a channels-first image stays flat ``(C,)`` (read as ``(C, 1, 1)``
    by :class:`~art_generalist.core.attack.InputSpace`); every other shape is returned in a form
    that broadcasts by itself: ``(1, 1, C)`` for channels-last images, ``(1, F)`` per feature,
    ``(C, H, W)`` or ``(C, 1, 1)`` as given. Shapes ART would apply along an axis other than
    the one ``channels_first`` names are refused with the shape that fixes them.
    """
    ops = list(classifier.preprocessing_operations or [])
    if not ops:
        return np.zeros(1, np.float32), np.ones(1, np.float32)
    if len(ops) == 1 and hasattr(ops[0], "mean") and hasattr(ops[0], "std"):
        shape, first = tuple(classifier.input_shape), bool(getattr(classifier, "channels_first", True))
        mean, std = (_statistic(np.asarray(getattr(ops[0], k), np.float32), k, shape, first) for k in ("mean", "std"))
        if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
            raise ValueError(f"The classifier's preprocessing mean/std must be finite with std > 0, got mean in "
                             f"[{mean.min():g}, {mean.max():g}] and std in [{std.min():g}, {std.max():g}]: a std of 0 "
                             f"divides by zero.")
        return mean, std
    names = [type(op).__name__ for op in ops]
    raise ValueError(
        f"Only mean/std `preprocessing` is supported by the training attack, got preprocessing "
        f"operations {names}. Remove `preprocessing_defences` from the classifier."
    )


def _statistic(a: np.ndarray, name: str, input_shape: tuple, channels_first: bool) -> np.ndarray:
    """One preprocessing statistic in a shape that broadcasts against an example as ART's does."""
    example = (1, *input_shape)
    if a.size == 1:
        return a.reshape(1)
    image = len(input_shape) == 3
    if a.ndim == 1:
        n = a.shape[0]
        if n != input_shape[-1]:  # ART puts it on axis 1 of the batch: the first axis of an example
            if n != input_shape[0]:
                raise ValueError(f"The classifier's preprocessing {name} has {n} values, which match neither "
                                 f"the first nor the last axis of input_shape {input_shape}.")
            if image and not channels_first:
                raise ValueError(f"The classifier's preprocessing {name} has {n} values: ART applies it along the "
                                 f"first axis of input_shape {input_shape}, but channels_first=False puts the "
                                 f"channels last. Pass it with shape (1, 1, {input_shape[-1]}) or fix "
                                 f"channels_first.")
            return a if image else a.reshape(n, *([1] * (len(input_shape) - 1)))
        if image and channels_first:  # ART broadcasts along the last axis: the width, not the channels
            raise ValueError(f"The classifier's preprocessing {name} has {n} values and input_shape {input_shape} "
                             f"is channels-first, but its width is also {n}: ART's StandardisationMeanStd then "
                             f"normalises along the width, not the channels. Pass {name} with shape "
                             f"({n}, 1, 1).")
        return a.reshape(*([1] * max(1, len(input_shape) - 1)), n)  # (1, F) per feature: not read as (C, 1, 1)
    try:
        ok = np.broadcast_shapes(a.shape, example) == example
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"The classifier's preprocessing {name} of shape {a.shape} does not broadcast against "
                         f"input_shape {input_shape}.")
    return a


def clip_range(classifier: "PyTorchClassifier") -> tuple[float, float]:
    """``clip_values`` as floats; bounded inputs are required for PGD.

    Per-feature arrays are accepted when every feature has the same bounds; different bounds per
    feature are refused (the training PGD works in one range).
    """
    if classifier.clip_values is None:
        raise ValueError("The classifier has no `clip_values`; PGD training needs a bounded input "
                         "range, e.g. clip_values=(0.0, 1.0).")
    lo_a, hi_a = (np.asarray(v, dtype=np.float64) for v in classifier.clip_values)
    if lo_a.size > 1 or hi_a.size > 1:
        if np.ptp(lo_a) > 0 or np.ptp(hi_a) > 0:
            raise ValueError(
                f"Per-feature `clip_values` with different bounds per feature (min in [{lo_a.min():g}, "
                f"{lo_a.max():g}], max in [{hi_a.min():g}, {hi_a.max():g}]) are not supported: the training PGD "
                f"clips every feature to one range. Rescale the features to a common range, e.g. (0, 1).")
    lo, hi = float(lo_a.reshape(-1)[0]), float(hi_a.reshape(-1)[0])
    if not hi > lo:
        raise ValueError(f"`clip_values` must satisfy min < max, got {classifier.clip_values}.")
    return lo, hi


def clone_optimizer(optimizer: Optional[torch.optim.Optimizer], model: nn.Module,
                    params: Optional[Iterable[nn.Parameter]] = None,
                    source: Optional[nn.Module] = None) -> Optional[torch.optim.Optimizer]:
    """A fresh optimizer of the same class with the same parameter groups, each with its own
    hyper-parameters (lr, weight decay, ...), on ``model``'s copies of the parameters.

    ``source`` is the model ``optimizer`` trains (``model`` is a copy of it); parameters are
    matched by name. ``params`` restricts the new optimizer to a subset of ``model``'s
    parameters. Unlike ART's ``clone_for_refitting`` this keeps the weights; the state (momentum)
    is new. Without ``source`` the groups are matched by position in ``model.parameters()``.
    """
    if optimizer is None:
        return None
    target = dict(model.named_parameters())
    names = {id(p): n for n, p in (source if source is not None else model).named_parameters()}
    flat = [p for g in optimizer.param_groups for p in g["params"]]
    if source is None and not all(id(p) in names for p in flat) and len(flat) == len(target) and all(
            p.shape == q.shape for p, q in zip(flat, target.values())):  # built on the original's parameters()
        names = {id(p): n for p, n in zip(flat, target)}
    keep = None if params is None else {id(p) for p in params}
    groups = []
    for k, group in enumerate(optimizer.param_groups):
        mapped = []
        for p in group["params"]:
            if id(p) not in names or names[id(p)] not in target:
                raise ValueError(f"The classifier's optimizer (group {k}) holds a parameter of shape "
                                 f"{tuple(p.shape)} that is not a parameter of the classifier's model; build the "
                                 f"optimizer on `model.parameters()` (or groups of them).")
            q = target[names[id(p)]]
            if keep is None or id(q) in keep:
                mapped.append(q)
        if mapped:
            groups.append({**{key: v for key, v in group.items() if key != "params"}, "params": mapped})
    if not groups:
        raise ValueError("No trainable parameter of the model is in the classifier's optimizer.")
    return type(optimizer)(groups, **optimizer.defaults)


def trained_copy(template: "PyTorchClassifier", model: nn.Module,
                 trainable: Callable[[nn.Module], list[nn.Parameter]],
                 optimizer: Optional[Callable[[list], torch.optim.Optimizer]] = None) -> "PyTorchClassifier":
    """A copy of ``model`` behind ``template``'s ART classifier, trained by ``optimizer(params)`` or
    else by a clone of ``template``'s optimizer (its groups and their hyper-parameters), where
    ``params = trainable(copy)`` are the parameters that train (it freezes the others)."""
    copy = copy_model(model)
    params = trainable(copy)
    opt = optimizer(params) if optimizer is not None else clone_optimizer(template.optimizer, copy, params,
                                                                          source=template.model)
    return make_classifier(template, copy, opt)


def make_classifier(template: "PyTorchClassifier", model: nn.Module,
                    optimizer: Optional[torch.optim.Optimizer]) -> "PyTorchClassifier":
    """An ART ``PyTorchClassifier`` for ``model`` with ``template``'s loss, shape, classes,
    clip values, preprocessing, postprocessing defences, channel order and device (and, for a
    Hugging Face classifier, its ``processor``; ``model`` must be a :func:`copy_model` copy)."""
    from art.estimators.classification import PyTorchClassifier

    kwargs: dict[str, Any] = {}
    if getattr(template, "processor", None) is not None:
        kwargs["processor"] = template.processor
    # A Hugging Face classifier stays one (its forward returns ``.logits``); anything else is
    # rebuilt as a plain PyTorchClassifier, whose constructor every subclass shares.
    cls = type(template) if _is_hf(type(template)) else PyTorchClassifier
    if _is_hf(cls):  # ART wraps forward again: give it the model's own forward
        model.__dict__.pop("forward", None)
    pre = getattr(template, "preprocessing_operations", None) or []
    prep = (pre[0].mean, pre[0].std) if pre else (0.0, 1.0)
    return cls(
        model=model, loss=template.loss, input_shape=template.input_shape, nb_classes=template.nb_classes,
        optimizer=optimizer, channels_first=template.channels_first, clip_values=template.clip_values,
        preprocessing=prep, postprocessing_defences=template.postprocessing_defences,
        device_type="gpu" if template.device.type == "cuda" else "cpu", **kwargs,
    )


def _is_hf(cls: type) -> bool:
    return any(c.__name__ == "HuggingFaceClassifierPyTorch" for c in cls.__mro__)


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
