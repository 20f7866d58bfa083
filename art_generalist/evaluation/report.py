"""The result of :func:`~art_generalist.evaluation.evaluate`: numbers, checks, provenance.

Modelled on RobustBench's ``model_info`` JSON (clean and AutoAttack accuracy, ε, n, an
``unreliable`` flag), extended with every attack's own accuracy, the per-example worst case, the
integrity checks and the package versions, so a number can be traced back to how it was made.
"""
from __future__ import annotations

import importlib.metadata
import os
import platform
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, Union

from art_generalist._version import __version__, source_commit

__all__ = ["EvaluationReport", "package_versions"]

_PACKAGES = ("art-generalist", "torch", "adversarial-robustness-toolbox", "torchattacks", "pyautoattack",
             "autoattack", "numpy")


def package_versions() -> dict[str, str]:
    """Versions of Python and of the packages that shape the numbers (absent ones omitted)."""
    out = {"python": platform.python_version(), "art-generalist": __version__}
    commit = source_commit()
    if commit is not None:
        out["art-generalist-commit"] = commit
    for name in _PACKAGES[1:]:  # art-generalist: the source's own version, not a stale install's
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


@dataclass
class EvaluationReport:
    """Robustness of one model under one threat model.

    Accuracies are fractions of all ``n`` points. ``attacks[name]["acc"]`` is that attack's own
    robust accuracy (run on every clean-correct point); ``"cumulative_acc"`` is the worst case
    over it and the attacks before it (AutoAttack-style aggregation); ``robust_acc`` is the
    per-example worst case over all attacks, so ``robust_acc ≤ clean_acc`` by construction.
    ``reliable`` is False when any integrity check failed (see ``unreliable_reasons``).
    """

    model_name: str
    n: int
    eps: float                      #: ε in the classifier's input units
    eps_unit: float                 #: ε in unit range (ε / (hi − lo)), what the attacks use
    norm: str                       #: "Linf" or "L2"
    seed: int
    clean_acc: float
    robust_acc: float
    attacks: dict[str, dict[str, Any]] = field(default_factory=dict)
    autoattack: Optional[dict[str, Any]] = None
    checks: list[dict[str, Any]] = field(default_factory=list)
    reliable: bool = True
    unreliable_reasons: list[str] = field(default_factory=list)
    per_example: dict[str, list[bool]] = field(default_factory=dict)  #: "clean", "robust" flags
    model_training_on_entry: bool = False
    settings: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=package_versions)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (plain Python types only)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EvaluationReport":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_json(self, path: Union[str, os.PathLike[str]], indent: int = 2) -> Path:
        """Write the report as JSON atomically (a temporary file renamed over ``path``: a kill or a
        full disk leaves the previous file whole; the error names the path and the free space)."""
        from art_generalist.state.files import atomic_write_json

        return atomic_write_json(path, self.to_dict(), indent=indent, allow_nan=True)

    @classmethod
    def from_json(cls, path: Union[str, os.PathLike[str]]) -> "EvaluationReport":
        """Read a report written by :meth:`to_json` (a ValueError naming the file when it is not JSON)."""
        from art_generalist.state.files import read_json

        return cls.from_dict(read_json(path))

    def summary(self) -> str:
        """One line: model, threat model, clean / per-attack / worst-case accuracy, reliability."""
        parts = " ".join(f"{name}={res['acc']:.2%}" for name, res in self.attacks.items())
        status = "reliable" if self.reliable else f"UNRELIABLE ({'; '.join(self.unreliable_reasons)})"
        return (f"{self.model_name}: {self.norm} eps={self.eps:g} n={self.n} clean={self.clean_acc:.2%} "
                f"{parts}{' ' if parts else ''}robust={self.robust_acc:.2%} [{status}]")
