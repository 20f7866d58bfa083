"""Side-effect guard for an evaluation: eval mode in, modes restored out, state compared.

RobustBench's ``benchmark`` warns when a model is in train mode; here the model is *put* in eval
mode for the evaluation (every module's own flag is restored afterwards, not just the root's), a
model found in train mode on entry is recorded, and forward pre-hooks verify that every forward
pass during the evaluation really ran in eval mode (a model that switches itself to train mode,
e.g. to use batch statistics, is caught). Parameters and buffers are snapshot on entry and must be
bit-identical on exit (a model that updates itself during inference is not a fixed function, so
its robustness cannot be measured by attacking it).
"""
from __future__ import annotations

import logging
from types import TracebackType
from typing import Optional

import torch
from torch import nn

from art_generalist.evaluation.checks import CheckResult
from art_generalist.parallel.shards import gather

logger = logging.getLogger(__name__)

__all__ = ["ModelGuard"]


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-identical, NaNs in the same places counting as equal."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if torch.equal(a, b):
        return True
    if a.is_floating_point() or a.is_complex():
        return bool(((a == b) | (torch.isnan(a) & torch.isnan(b))).all())
    return False


class ModelGuard:
    """Context manager: eval mode and (optionally) monitoring for the duration of an evaluation.

    :param model: the module under evaluation.
    :param monitor: install forward pre-hooks and snapshot the state (the cheap checks
        ``eval_mode`` and ``state_unchanged``); without it only the modes are set and restored.
    """

    def __init__(self, model: nn.Module, monitor: bool = True) -> None:
        self.model, self.monitor = model, bool(monitor)
        self.training_on_entry = bool(model.training)
        self._modes: list[tuple[nn.Module, bool]] = []
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._snapshot: dict[str, torch.Tensor] = {}
        self.train_mode_calls = 0
        self.forward_calls = 0
        self.changed: list[str] = []

    def _pre_hook(self, module: nn.Module, args: tuple) -> None:
        self.forward_calls += 1
        if module.training:
            self.train_mode_calls += 1

    def __enter__(self) -> "ModelGuard":
        self._modes = [(m, m.training) for m in self.model.modules()]
        if self.training_on_entry:
            logger.warning("The model was in train mode; it is evaluated in eval mode and its mode "
                           "is restored afterwards.")
        if self.monitor:
            self._snapshot = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self._hooks = [m.register_forward_pre_hook(self._pre_hook) for m in self.model.modules()]
        self.model.eval()
        return self

    def __exit__(self, exc_type: Optional[type], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        if self.monitor:
            now = self.model.state_dict()
            self.changed = [k for k, v in self._snapshot.items() if k not in now or not _same(v, now[k].detach())]
            self.changed += [k for k in now if k not in self._snapshot]
            self._snapshot = {}
        for module, mode in self._modes:
            module.training = mode

    def results(self) -> list[CheckResult]:
        """``eval_mode`` and ``state_unchanged`` (call after the ``with`` block)."""
        entry = " (the model was in train mode on entry; evaluated in eval mode, mode restored)" \
            if self.training_on_entry else ""
        train_calls = int(gather(torch.tensor(self.train_mode_calls)))  # summed over the ranks (sharding)
        mode = CheckResult(
            "eval_mode", train_calls == 0,
            f"{train_calls} of {self.forward_calls} module forward calls ran in train mode{entry}")
        shown = ", ".join(self.changed[:5]) + (" ..." if len(self.changed) > 5 else "")
        state = CheckResult(
            "state_unchanged", not self.changed,
            "parameters and buffers bit-identical before and after" if not self.changed
            else f"{len(self.changed)} parameters/buffers changed during evaluation: {shown}")
        return [mode, state]
