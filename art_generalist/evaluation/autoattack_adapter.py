"""One adapter for the two packagings of the reference AutoAttack (Croce & Hein 2020).

AutoAttack: "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", https://arxiv.org/abs/2003.01690 (code: https://github.com/fra31/auto-attack).

* fra31's ``autoattack`` (git install only) is preferred when importable:
  ``AutoAttack(model, norm, eps, seed, verbose, attacks_to_run, version, device=...)`` and
  ``run_standard_evaluation(x, y, bs=...)`` returning ``x_adv``; it reports through ``print``,
  which the adapter captures and forwards to this module's logger at DEBUG level.
* ``pyautoattack`` (PyPI) otherwise: ``AutoAttack(model, *, attacks, device, eps, norm, seed,
  version)`` and ``run_standard_evaluation(x, y, /, *, batch_size)`` returning ``(x_adv, y_adv)``.

Both share the attack kernels. The adapter always passes ``device`` and ``seed`` (their defaults
differ: cuda vs cpu, and ``seed=None`` means "seed from the clock"), and runs the sub-attacks one
at a time on the points still robust (AutoAttack's own aggregation), so it can record each
sub-attack's time and kills, which the Square-vs-white-box integrity check needs. The results
are the same as one ``run_standard_evaluation`` call: AutoAttack reseeds at every batch, so the
adapter calls it once per batch, and under ``torch.distributed`` shares the batches out across
the ranks (:mod:`art_generalist.parallel.shards`). The global torch RNG is restored afterwards (APGD
and FAB reseed it).

Versions: ``"standard"``, ``"plus"`` and ``"rand"`` are AutoAttack's own presets; ``"fast"``
(``['apgd-ce', 'apgd-t']``), ``"apgd-ce"`` (``['apgd-ce']``) or an explicit sequence of
sub-attack names run as ``version='custom'`` with the *standard* budgets (APGD-CE 1 restart x 100
iterations, APGD-T/FAB-T 9 target classes, Square 5,000 queries). Target classes are capped at
``n_classes - 1`` when there are fewer than 10 classes.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import io
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

import torch
from torch import nn

from art_generalist.core.attack import ThreatModel, predict_labels
from art_generalist.parallel.shards import batch_starts, gather, owns

logger = logging.getLogger(__name__)

__all__ = ["AutoAttackAdapter", "AutoAttackResult", "AA_VERSIONS", "SUB_ATTACKS", "available_backends"]

SUB_ATTACKS = ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t")
#: Named versions; ``None`` = AutoAttack's own preset, a tuple = a custom subset.
AA_VERSIONS: dict[str, Optional[tuple[str, ...]]] = {
    "standard": None, "plus": None, "rand": None, "fast": ("apgd-ce", "apgd-t"), "apgd-ce": ("apgd-ce",)}
_BACKENDS = {"autoattack": "autoattack", "pyautoattack": "pyautoattack"}  # module -> distribution


def available_backends() -> list[str]:
    """The importable AutoAttack packagings, preferred first."""
    found = []
    for module in _BACKENDS:
        try:
            importlib.import_module(module)
            found.append(module)
        except ImportError:
            continue
    return found


def _package_version(module_name: str, module: Any) -> str:
    try:
        return importlib.metadata.version(_BACKENDS[module_name])
    except importlib.metadata.PackageNotFoundError:
        return str(getattr(module, "__version__", "unknown"))


@dataclass
class AutoAttackResult:
    """Adversarial inputs (unit range), per-example robustness and per-sub-attack records."""

    x_adv: torch.Tensor
    robust: torch.Tensor
    sub_attacks: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


class AutoAttackAdapter:
    """Reference AutoAttack behind one API, whichever package provides it.

    :param model: the classifier on unit-range inputs (an ``InputSpace``), in eval mode.
    :param eps: ε in unit range. :param norm: ``'inf'`` or ``2``.
    :param version: a key of :data:`AA_VERSIONS` or a sequence of sub-attack names.
    :param seed: passed to AutoAttack (never ``None``). :param device: passed to AutoAttack.
    :param n_classes: number of classes (caps the target classes of APGD-T / FAB-T).
    :param backend: ``'autoattack'`` (fra31) or ``'pyautoattack'``; ``None`` prefers fra31's.
    """

    def __init__(self, model: nn.Module, *, eps: float, norm: Union[str, float, ThreatModel] = "inf",
                 version: Union[str, Sequence[str]] = "standard", seed: int = 0,
                 device: Union[str, torch.device] = "cpu", n_classes: int = 10,
                 backend: Optional[str] = None) -> None:
        self.model, self.eps, self.seed = model, float(eps), int(seed)
        self.norm = ThreatModel.parse(norm)
        self.device, self.n_classes = torch.device(device), int(n_classes)
        self.version, custom = self.parse_version(version)
        self.backend = self._pick_backend(backend)
        module = importlib.import_module(self.backend)
        self.package_version = _package_version(self.backend, module)
        aa_norm = "Linf" if self.norm is ThreatModel.LINF else "L2"
        aa_version = "custom" if custom is not None else self.version
        kwargs = dict(norm=aa_norm, eps=self.eps, seed=self.seed, device=str(self.device), version=aa_version)
        if self.backend == "autoattack":
            self._aa = module.AutoAttack(model, verbose=False, attacks_to_run=list(custom or []), **kwargs)
        else:
            self._aa = module.AutoAttack(model, attacks=list(custom) if custom else None, **kwargs)
        if custom is not None:
            self._standard_budgets()
        n_targets = min(9, self.n_classes - 1)
        self._aa.apgd_targeted.n_target_classes = min(self._aa.apgd_targeted.n_target_classes, n_targets)
        self._aa.fab.n_target_classes = min(self._aa.fab.n_target_classes, n_targets)
        self.sub_attacks: tuple[str, ...] = tuple(self._aa.attacks_to_run)

    @staticmethod
    def parse_version(version: Union[str, Sequence[str]]) -> tuple[str, Optional[tuple[str, ...]]]:
        if isinstance(version, str):
            if version not in AA_VERSIONS:
                raise ValueError(f"Unknown `aa_version` {version!r}: use one of {sorted(AA_VERSIONS)} "
                                 f"or a list of sub-attacks from {list(SUB_ATTACKS)}.")
            return version, AA_VERSIONS[version]
        names = tuple(version)
        bad = [n for n in names if n not in SUB_ATTACKS]
        if not names or bad:
            raise ValueError(f"`aa_version` sub-attacks must be a non-empty list from {list(SUB_ATTACKS)}, "
                             f"got {list(names)}.")
        return "custom", names

    @staticmethod
    def _pick_backend(backend: Optional[str]) -> str:
        if backend is not None:
            if backend not in _BACKENDS:
                raise ValueError(f"Unknown AutoAttack `backend` {backend!r}: use 'autoattack' or 'pyautoattack'.")
            importlib.import_module(backend)  # ImportError with the package name if missing
            return backend
        found = available_backends()
        if not found:
            raise ImportError("AutoAttack is not installed: `pip install pyautoattack` (or fra31's "
                              "`pip install git+https://github.com/fra31/auto-attack`).")
        return found[0]

    def _standard_budgets(self) -> None:
        """The standard version's budgets for custom subsets (the constructors' differ)."""
        self._aa.apgd.n_restarts = 1
        self._aa.apgd_targeted.n_restarts = 1
        self._aa.apgd_targeted.n_target_classes = 9
        self._aa.fab.n_restarts = 1
        self._aa.fab.n_target_classes = 9
        self._aa.square.n_queries = 5000

    def budgets(self) -> dict[str, Any]:
        """The budgets the sub-attacks run with (for the report)."""
        aa = self._aa
        return {"apgd_restarts": aa.apgd.n_restarts, "apgd_iter": aa.apgd.n_iter,
                "apgd_t_restarts": aa.apgd_targeted.n_restarts,
                "apgd_t_target_classes": aa.apgd_targeted.n_target_classes,
                "fab_restarts": aa.fab.n_restarts, "fab_target_classes": aa.fab.n_target_classes,
                "square_queries": aa.square.n_queries}

    def info(self) -> dict[str, Any]:
        return {"package": self.backend, "package_version": self.package_version, "version": self.version,
                "sub_attacks": list(self.sub_attacks), "norm": "Linf" if self.norm is ThreatModel.LINF else "L2",
                "eps_unit": self.eps, "seed": self.seed, "device": str(self.device), "budgets": self.budgets()}

    def _call(self, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> torch.Tensor:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            if self.backend == "autoattack":
                x_adv = self._aa.run_standard_evaluation(x, y, bs=batch_size)
            else:
                x_adv, _ = self._aa.run_standard_evaluation(x, y, batch_size=batch_size)
        if out.getvalue().strip():
            logger.debug("%s output: %s", self.backend, out.getvalue().strip())
        return x_adv

    def run(self, u: torch.Tensor, y: torch.Tensor, batch_size: int = 250) -> AutoAttackResult:
        """Attack unit-range inputs ``u`` (labels ``y``); each sub-attack only on points still robust.

        ``sub_attacks`` lists what actually ran: name, points attacked, points broken, seconds.
        """
        u, y = u.to(self.device), y.to(self.device)
        start = time.perf_counter()
        robust = predict_labels(self.model, u, batch_size, eval_mode=False) == y
        x_adv = u.clone()
        records: list[dict[str, Any]] = []
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            for name in self.sub_attacks:
                idx = robust.nonzero().flatten()
                if len(idx) == 0:
                    logger.debug("AutoAttack: no robust points left, %s skipped", name)
                    break
                t0 = time.perf_counter()
                self._aa.attacks_to_run = [name]
                broken = torch.zeros(len(idx), dtype=torch.bool, device=self.device)
                adv = torch.zeros_like(u[idx])
                for k, i in enumerate(batch_starts(len(idx), batch_size)):
                    if owns(k):  # AutoAttack reseeds every batch: one call per batch is the same run
                        b = idx[i:i + batch_size]
                        adv[i:i + batch_size] = self._call(u[b], y[b], batch_size).to(self.device)
                        broken[i:i + batch_size] = predict_labels(self.model, adv[i:i + batch_size], batch_size,
                                                                  eval_mode=False) != y[b]
                adv, broken = gather(adv), gather(broken)
                robust[idx[broken]] = False
                x_adv[idx[broken]] = adv[broken]
                records.append({"name": name, "n_attacked": int(len(idx)), "n_broken": int(broken.sum()),
                                "seconds": time.perf_counter() - t0})
                logger.debug("AutoAttack %s: %d of %d broken", name, records[-1]["n_broken"], len(idx))
        self._aa.attacks_to_run = list(self.sub_attacks)
        return AutoAttackResult(x_adv=x_adv, robust=robust, sub_attacks=records,
                                seconds=time.perf_counter() - start)
