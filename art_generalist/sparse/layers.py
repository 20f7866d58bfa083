"""Which weights can be masked, and the checks shared by the sparse modules.

Prunable weights are the ``weight`` parameters of ``nn.Conv2d`` (4-D) and ``nn.Linear`` (2-D)
modules, subclasses included, as in the official Flying Bird code (which masks every 4-D and 2-D
parameter, the first convolution and the classifier included). Biases and BatchNorm parameters
are never masked. Layers are named by the weight's parameter name, as ``model.named_parameters()``
and ``model.state_dict()`` spell it (``"features.0.weight"``).
"""
from __future__ import annotations

import math
from numbers import Real

from torch import nn

#: The layer selections understood by ``layers=`` arguments.
LAYER_KINDS = {"conv": (nn.Conv2d,), "conv+linear": (nn.Conv2d, nn.Linear)}


def check_density(density: float, name: str = "density") -> float:
    """``density`` as a float in (0, 1]; otherwise a ValueError naming ``name`` and the value."""
    if isinstance(density, bool) or not isinstance(density, Real):
        raise TypeError(f"`{name}` must be a number in (0, 1], got {density!r} ({type(density).__name__}).")
    value = float(density)
    if not (0.0 < value <= 1.0) or math.isnan(value):
        raise ValueError(f"`{name}` must lie in (0, 1] (the fraction of weights kept), got {density!r}.")
    return value


def check_layers(layers: str) -> tuple[type, ...]:
    """The module classes selected by ``layers`` (``"conv"`` or ``"conv+linear"``)."""
    if layers not in LAYER_KINDS:
        raise ValueError(f"`layers` must be one of {sorted(LAYER_KINDS)}, got {layers!r}.")
    return LAYER_KINDS[layers]


def prunable_modules(model: nn.Module, layers: str = "conv+linear") -> dict[str, nn.Module]:
    """The maskable modules keyed by their weight's parameter name, in ``named_modules`` order.

    Raises TypeError for a non-module, ValueError when no layer can hold a mask (no Conv2d or
    Linear, or weights that are not parameters, e.g. after ``torch.nn.utils.prune``).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
    kinds = check_layers(layers)
    params = {id(p): name for name, p in model.named_parameters()}
    found: dict[str, nn.Module] = {}
    for mod_name, module in model.named_modules():
        if not isinstance(module, kinds):
            continue
        weight = getattr(module, "weight", None)
        where = mod_name or type(model).__name__
        if isinstance(weight, nn.parameter.UninitializedParameter):
            raise ValueError(f"Layer `{where}` has an uninitialised (lazy) weight: run one forward pass before "
                             f"building masks.")
        if not isinstance(weight, nn.Parameter) or id(weight) not in params:
            raise ValueError(f"Layer `{where}` ({type(module).__name__}) cannot hold a mask: its `weight` is not a "
                             f"parameter of the model (is torch.nn.utils.prune applied to it?).")
        name = params[id(weight)]
        if name not in found:  # a weight shared by several modules is masked once
            found[name] = module
    if not found:
        kinds_text = " or ".join(k.__name__ for k in kinds)
        raise ValueError(f"`model` ({type(model).__name__}) has no prunable layer: sparsity needs at least one "
                         f"{kinds_text} module.")
    return found


def prunable_weights(model: nn.Module, layers: str = "conv+linear") -> dict[str, nn.Parameter]:
    """The maskable weights keyed by parameter name (see :func:`prunable_modules`)."""
    return {name: module.weight for name, module in prunable_modules(model, layers).items()}
