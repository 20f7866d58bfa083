"""The options every trainer shares, declared once (in the style of MadryLab's
``robustness/defaults.py``): a frozen dataclass per option group, one field per option, each with
its flat name (the keyword users pass), its default and its documentation (see
:mod:`art_generalist.core.options` for the machinery): the PGD budget and the runtime options.
A method's own options are declared beside it (Generalist's: :mod:`art_generalist.methods.generalist`).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

from art_generalist.core.attack import ThreatModel
from art_generalist.core.options import Options, check_int, option


# -- the PGD budget (ART's flat names) ------------------------------------------------------------
@dataclass(frozen=True)
class PGDBudget(Options):
    """The training attack's budget, in the classifier's input units."""

    eps: float = option(8 / 255, "eps", "training PGD radius in the classifier's input units (ART's name)",
                        "8/255")
    eps_step: float = option(2 / 255, "eps_step", "training PGD step size", "2/255")
    max_iter: int = option(10, "max_iter", "training PGD steps")
    norm: Union[str, float] = option("inf", "norm", '`"inf"` (L∞) or `2` (L2)', '`"inf"`')

    def __post_init__(self) -> None:
        for name in ("eps", "eps_step"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"`{name}` must be a positive number, got {value!r}.")
        check_int(self.max_iter, "max_iter", 1)
        ThreatModel.parse(self.norm)

    def check_range(self, clip_values: tuple[float, float]) -> None:
        """Refuse an ε wider than the input range (the 0-255 mix-up)."""
        check_eps_range(self.eps, clip_values)


#: the budget's defaults, the one place every trainer's signature reads them from
BUDGET = PGDBudget()


def check_eps_range(eps: float, clip_values: tuple[float, float]) -> None:
    """ε must fit the classifier's clip range (``eps=8`` for (0, 1) images is the 0-255 mix-up)."""
    lo, hi = clip_values
    if (lo, hi) == (0.0, 1.0) and eps > 1:
        raise ValueError(f"`eps`={eps} exceeds the (0, 1) input range: eps is in input units "
                         f"(for 8/255 on [0, 1] images pass eps=8/255, not 8).")
    if eps > hi - lo:
        raise ValueError(f"`eps`={eps} exceeds the clip range width {hi - lo:g}.")


# -- runtime options shared by every trainer ------------------------------------------------------
@dataclass(frozen=True)
class RuntimeOptions(Options):
    """How a trainer runs; none of these changes the algorithm."""

    val_max_iter: int = option(20, "val_max_iter", "steps of the validation PGD (step 2.5·eps/steps); 0 for clean only")
    augment: Optional[Callable] = option(None, "augment", "tensor-native augmentation of unit-range batches, e.g. "
                                         "`art_generalist.core.augment.random_crop_flip` for CIFAR")
    amp: bool = option(False, "amp", "bf16 autocast")
    channels_last: Union[bool, str] = option(
        "auto", "channels_last", 'channels_last memory format for the models and their 4-D inputs; `"auto"` turns '
        "it on for image classifiers (same arithmetic, faster convolutions and pooling on CPU)", '`"auto"`')
    verbose: bool = option(True, "verbose", "tqdm bars per epoch and per batch", in_settings=False)
    copy_classifier: bool = option(
        False, "copy_classifier", "train a copy and leave the user's classifier untouched (`get_classifier()` is "
        "then a new classifier); by default the classifier passed in is trained in place, as ART's trainers do",
        in_settings=False)
    sync_batchnorm: bool = option(
        False, "sync_batchnorm", "under torch.distributed on CUDA: BatchNorm statistics of the training forward "
        "passes over the global batch (torch's SyncBatchNorm) instead of each rank's slice")

    def __post_init__(self) -> None:
        check_int(self.val_max_iter, "val_max_iter", 0)
        if not isinstance(self.copy_classifier, bool):
            raise ValueError(f"`copy_classifier` must be True or False, got {self.copy_classifier!r}.")
        if not isinstance(self.sync_batchnorm, bool):
            raise ValueError(f"`sync_batchnorm` must be True or False, got {self.sync_batchnorm!r}.")
        if self.channels_last != "auto" and not isinstance(self.channels_last, bool):
            raise ValueError(f"`channels_last` must be True, False or 'auto', got {self.channels_last!r}.")

    def use_channels_last(self, input_shape: Sequence[int], channels_first: bool = True) -> bool:
        """``"auto"``: channels_last for image inputs (``input_shape`` of rank 3, channels first)."""
        if self.channels_last == "auto":
            return len(tuple(input_shape)) == 3 and bool(channels_first)
        return bool(self.channels_last)
