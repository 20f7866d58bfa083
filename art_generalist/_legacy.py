"""Module paths of art-generalist 0.1, still importable with a ``DeprecationWarning``.

``import art_generalist.trainer`` (0.1) gives :mod:`art_generalist.trainers.generalist` (0.2):
a meta-path finder maps each old path to the module that now holds its contents.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from types import ModuleType
from typing import Optional

#: old module path -> new module path
MOVED = {
    "art_generalist.trainer": "art_generalist.trainers.generalist",
    "art_generalist.baselines": "art_generalist.trainers.single",
    "art_generalist.base_trainer": "art_generalist.trainers.base",
    "art_generalist.checkpoint": "art_generalist.state.files",
    "art_generalist.persistence": "art_generalist.state.trainer_state",
    "art_generalist.export": "art_generalist.state.export",
    "art_generalist.benchmark.art_baselines": "art_generalist.benchmark.art_runner",
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path, target=None) -> Optional[importlib.machinery.ModuleSpec]:
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = MOVED[spec.name]
        warnings.warn(f"`{spec.name}` moved to `{new}` in art-generalist 0.2; import it from there.",
                      DeprecationWarning, stacklevel=2)
        return importlib.import_module(new)

    def exec_module(self, module: ModuleType) -> None:
        pass  # the new module is already executed


def install() -> None:
    """Put the finder on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedModuleFinder())
