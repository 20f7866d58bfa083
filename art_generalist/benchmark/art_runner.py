"""ART's ``AdversarialTrainerMadryPGD`` and ``AdversarialTrainerTRADESPyTorch``, given a fair run.

Same model, data, epochs, ε (in the classifier's input units), PGD budget and learning-rate
schedule as Generalist, with the bugs of ART 1.20 (listed in ``WORKAROUNDS`` below) worked around
instead of fallen into. Every workaround applied is recorded in the run's ``workarounds``.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import numpy as np
import torch

from art_generalist import estimators
from art_generalist.core.attack import InputSpace, ThreatModel
from art_generalist.core.inputs import check_x, check_y
from art_generalist.core.schedules import OFFICIAL_LR, Schedule
from art_generalist.parallel import ranks
from art_generalist.state.files import (
    PathLike,
    atomic_save,
    collect_rng_states,
    remove_stale_temporaries,
    safe_load,
    set_rng_states,
)
from art_generalist.state.fingerprint import (
    OtherRunError,
    differences,
    model_structure,
    optimizer_hparams,
    tensor_digest,
)
from art_generalist.train.validation import TrackBest, validate

if TYPE_CHECKING:  # pragma: no cover
    from art.estimators.classification import PyTorchClassifier

logger = logging.getLogger(__name__)

WORKAROUNDS = {
    "epochwise_lr": "ART's Madry trainer steps a scheduler on every batch (it forwards `scheduler` to "
                    "PyTorchClassifier.fit per batch) and its TRADES trainer rejects modern schedulers "
                    "(issue #2389): we call fit one epoch at a time and set the learning rate per epoch "
                    "from the same schedule as Generalist.",
    "own_validation": "ART's Madry trainer ignores `validation_data` and its TRADES trainer applies the "
                      "preprocessing twice when validating: we validate between epochs ourselves, with "
                      "the same clean + PGD check as Generalist, RNG isolated.",
    "input_units": "ART's Madry defaults are eps=8, eps_step=2 in 0-255 units and 205 epochs: we pass ε "
                   "and the step in the classifier's [0, 1] units and the shared epoch budget.",
    "trades_attack": "ART's TRADES uses the CE-PGD attack it is given for the inner maximisation, not the "
                     "paper's KL attack: disclosed, not changed (that is ART's method).",
    "chunked_lr": "ART's trainers take no per-iteration schedule: each epoch is one shuffled pass fed to "
                  "fit() in chunks of whole batches, the lr set from the shared schedule at each chunk's "
                  "middle iteration (Generalist evaluates it after every iteration).",
    "no_sequential": "ART's TRADES crashes on nn.Sequential models (it reads the first layer's output): "
                     "the benchmark models are not nn.Sequential.",
    "awp_setup": "ART's AWP trainer needs a proxy classifier and counts its warm-up in the epochs of one fit "
                 "call: the proxy is a copy of the model with SGD at lr 0.01 (the AWP authors' code), mode PGD, "
                 "gamma 0.01 (their AT-AWP default) and no warm-up (theirs for AT-AWP), so per-epoch fit calls "
                 "perturb from the first epoch as one long call would.",
}


class ARTTrainerRun:
    """Train a copy of ``classifier`` with ART's Madry (``method="madry"``), TRADES or AWP trainer.

    :param lr_schedule: ``(epoch, nb_epochs) -> factor`` of the optimizer's initial lr, applied
        once per epoch (default: Generalist's official piecewise-linear schedule).
    :param lr_updates_per_epoch: with ``k > 1`` each epoch is one shuffled pass over the data fed
        to ART's ``fit`` in ``k`` chunks of whole batches, the lr set at each chunk's middle
        iteration: the nearest ART gets to the per-iteration schedules of the package's trainers.
    :param seed: seeds the chunked epochs' shuffling (ART shuffles within ``fit`` with numpy's
        global generator).
    :param track_best: a :class:`~art_generalist.train.validation.TrackBest` offered each validated epoch
        (kept in the checkpoint), as the package's trainers take it as a plug-in.
    """

    #: forward+backward passes of the model per example beside PGD-AT's one (FLOPs accounting):
    #: TRADES' clean pass; AWP's (PGD mode) pass of the proxy that finds the weight perturbation
    EXTRA_PASSES = {"madry": 0, "trades": 1, "awp": 1}

    def __init__(self, classifier: "PyTorchClassifier", method: str, eps: float, eps_step: float, max_iter: int,
                 trades_beta: float = 6.0, lr_schedule: Schedule = OFFICIAL_LR, val_max_iter: int = 20,
                 verbose: bool = False, lr_updates_per_epoch: int = 1, seed: int = 0,
                 norm: Union[str, float] = "inf", track_best: Optional[TrackBest] = None,
                 awp_gamma: float = 0.01) -> None:
        from art.attacks.evasion import ProjectedGradientDescent
        from art.defences.trainer import (
            AdversarialTrainerAWPPyTorch,
            AdversarialTrainerMadryPGD,
            AdversarialTrainerTRADESPyTorch,
        )

        if method not in ("madry", "trades", "awp"):
            raise ValueError(f"`method` must be 'madry', 'trades' or 'awp', got {method!r}.")
        model = estimators.copy_model(classifier.model)
        self.classifier = estimators.make_classifier(classifier, model,
                                                     estimators.clone_optimizer(classifier.optimizer, model))
        if self.classifier.optimizer is None:
            raise ValueError("The classifier needs an optimizer to be trained.")
        if isinstance(model, torch.nn.Sequential) and method == "trades":
            raise ValueError("ART's TRADES trainer does not support nn.Sequential models (ART bug, see "
                             "WORKAROUNDS['no_sequential']); wrap the model in a Module.")
        self.method, self.eps, self.eps_step, self.max_iter = method, eps, eps_step, max_iter
        self.norm = ThreatModel.parse(norm)
        art_norm = np.inf if self.norm is ThreatModel.LINF else 2
        if method == "madry" and self.norm is not ThreatModel.LINF:
            raise ValueError("ART's AdversarialTrainerMadryPGD trains against L∞ PGD only; use norm='inf'.")
        if not isinstance(lr_updates_per_epoch, int) or lr_updates_per_epoch < 1:
            raise ValueError(f"`lr_updates_per_epoch` must be an integer >= 1, got {lr_updates_per_epoch!r}.")
        self.lr_schedule, self.val_max_iter, self.verbose = lr_schedule, val_max_iter, verbose
        self.lr_updates_per_epoch, self._rng = lr_updates_per_epoch, np.random.default_rng(seed)
        self.seed, self.trades_beta = seed, trades_beta if method == "trades" else None
        self.awp_gamma = float(awp_gamma) if method == "awp" else None
        self.base_lrs = [g["lr"] for g in self.classifier.optimizer.param_groups]
        if method == "madry":
            self.trainer = AdversarialTrainerMadryPGD(self.classifier, nb_epochs=1, eps=eps, eps_step=eps_step,
                                                      max_iter=max_iter, num_random_init=1)
            self.workarounds = ["epochwise_lr", "own_validation", "input_units"]
        elif method == "awp":
            attack = ProjectedGradientDescent(self.classifier, norm=art_norm, eps=eps, eps_step=eps_step,
                                              max_iter=max_iter, num_random_init=1, verbose=False)
            proxy_model = estimators.copy_model(model)
            proxy = estimators.make_classifier(self.classifier, proxy_model,
                                               torch.optim.SGD(proxy_model.parameters(), lr=0.01))
            self.trainer = AdversarialTrainerAWPPyTorch(self.classifier, proxy, attack, mode="PGD",
                                                        gamma=self.awp_gamma, beta=trades_beta, warmup=0)
            self.workarounds = ["epochwise_lr", "own_validation", "awp_setup"]
        else:
            attack = ProjectedGradientDescent(self.classifier, norm=art_norm, eps=eps, eps_step=eps_step,
                                              max_iter=max_iter, num_random_init=1, verbose=False)
            self.trainer = AdversarialTrainerTRADESPyTorch(self.classifier, attack, beta=trades_beta)
            self.workarounds = ["epochwise_lr", "own_validation", "trades_attack", "no_sequential"]
        if lr_updates_per_epoch > 1:
            self.workarounds.append("chunked_lr")
        self.space = InputSpace(model, estimators.clip_range(classifier), *estimators.mean_std(classifier))
        self.history: list[dict] = []
        self.track_best = track_best

    def fit(self, x: np.ndarray, y: np.ndarray, nb_epochs: int, batch_size: int = 128,
            validation_data: Optional[tuple[Any, Any]] = None, checkpoint_dir: Optional[PathLike] = None,
            resume: bool = False, stop_after: Optional[int] = None) -> list[dict]:
        """Train for ``nb_epochs`` epochs; returns a history like the package's trainers.

        With ``checkpoint_dir`` the model, optimizer, history and every RNG state (numpy's global
        generator included: ART shuffles with it) are saved after each epoch; ``resume`` continues
        from that file, so an interrupted run ends with the weights of an uninterrupted one.
        ``stop_after`` returns after that epoch of the budget (to be resumed later).
        """
        path = Path(checkpoint_dir) / "art-checkpoint.pt" if checkpoint_dir is not None else None
        if path is not None and ranks.is_main_process():
            remove_stale_temporaries(path.parent)  # what a write killed mid-way left
        settings = self.settings(nb_epochs, batch_size, x, y, validation_data) if path is not None else None
        first = self._resume(path, settings) if resume and path is not None and path.is_file() else 1
        val = None
        if validation_data is not None:
            clf = self.classifier
            xv = check_x(validation_data[0], clf.input_shape, estimators.clip_range(clf), "validation_data")
            yv = check_y(validation_data[1], len(xv), clf.nb_classes, "validation_data's labels")
            val = (self.space.to_unit(xv.to(clf.device)), yv.to(clf.device))
        for epoch in range(first, nb_epochs + 1):
            start = time.perf_counter()
            for idx, t in self._chunks(len(x), batch_size, epoch):
                factor = self.lr_schedule(t, nb_epochs)
                for group, base in zip(self.classifier.optimizer.param_groups, self.base_lrs):
                    group["lr"] = base * factor
                self.trainer.fit(x if idx is None else x[idx], y if idx is None else y[idx], nb_epochs=1,
                                 batch_size=batch_size)
            ranks.broadcast_module(self.classifier.model)  # ART trains each rank alone: keep rank 0's
            record: dict[str, Any] = {"epoch": epoch, "seconds": time.perf_counter() - start, "examples": len(x),
                                      "lr": self.classifier.optimizer.param_groups[0]["lr"]}
            if val is not None:
                record.update(validate(self.space, *val, self.norm, self.eps, self.val_max_iter))
            if self.track_best is not None:
                self.track_best.offer(record, self.classifier.model)
            logger.info("ART %s epoch %d/%d %s", self.method, epoch, nb_epochs, record)
            self.history.append(record)
            if path is not None and ranks.is_main_process():  # rank 0 writes under torch.distributed
                atomic_save({"epoch": epoch, "nb_epochs": nb_epochs, "method": self.method, "settings": settings,
                             "model": self.classifier.model.state_dict(),
                             "optimizer": self.classifier.optimizer.state_dict(), "history": self.history,
                             "chunk_rng": self._rng.bit_generator.state, "rng": collect_rng_states(),
                             "track_best": self.track_best.state_dict() if self.track_best is not None else None}, path)
            ranks.barrier()
            if stop_after is not None and stop_after <= epoch < nb_epochs:
                break
        return self.history

    def get_classifier(self) -> "PyTorchClassifier":
        """The trained classifier (ART's trainers' name for it)."""
        return self.classifier

    def settings(self, nb_epochs: int, batch_size: int, x: Any, y: Any,
                 validation_data: Optional[tuple[Any, Any]] = None) -> dict:
        """Everything a resumed run must share with the run that wrote the checkpoint: the budget,
        the model's structure, the optimizer's groups and the data (SHA-256 of examples and labels)."""
        schedule = self.lr_schedule
        return {"method": self.method, "nb_epochs": nb_epochs, "eps": self.eps, "eps_step": self.eps_step,
                "max_iter": self.max_iter, "norm": self.norm.value, "trades_beta": self.trades_beta,
                **({"awp_gamma": self.awp_gamma} if self.awp_gamma is not None else {}),
                "batch_size": batch_size, "examples": len(x), "data": _data_digest(x, y),
                "validation": None if validation_data is None else _data_digest(*validation_data),
                "model": model_structure(self.classifier.model),
                "optimizer": optimizer_hparams(self.classifier.optimizer, self.base_lrs),
                "val_max_iter": self.val_max_iter, "lr_updates_per_epoch": self.lr_updates_per_epoch,
                "seed": self.seed, "base_lrs": list(self.base_lrs),
                # a schedule without a repr of its own (a lambda) cannot be compared: None
                "lr_schedule": repr(schedule) if type(schedule).__repr__ is not object.__repr__ else None}

    def _resume(self, path: Path, settings: dict) -> int:
        state = safe_load(path)
        # checkpoints of earlier versions recorded the method and the epoch budget only
        stored = state.get("settings") or {"method": state["method"], "nb_epochs": state["nb_epochs"]}
        shared = [k for k in settings if k in stored]  # (earlier versions recorded fewer settings)
        differ = differences({k: stored[k] for k in shared}, {k: settings[k] for k in shared})
        if differ:
            detail = "; ".join(differ)
            raise OtherRunError(f"{path} was written by an ART {stored['method']} run with other settings ({detail}); "
                             f"resume with the same settings or start afresh in another folder.")
        if "settings" not in state:
            logger.warning("%s records only the method and the epoch budget; the other settings are not checked",
                           path)
        self.classifier.model.load_state_dict(state["model"])
        self.classifier.optimizer.load_state_dict(state["optimizer"])
        self.history = list(state["history"])
        self._rng.bit_generator.state = state["chunk_rng"]
        if self.track_best is not None and state.get("track_best") is not None:
            self.track_best.load_state_dict(state["track_best"])
        set_rng_states(state["rng"])
        logger.info("resumed ART %s after epoch %d from %s", self.method, state["epoch"], path)
        return state["epoch"] + 1

    def _chunks(self, n: int, batch_size: int, epoch: int) -> list[tuple[Optional[np.ndarray], float]]:
        """(indices or None for all, schedule time) of each ``fit`` call of one epoch."""
        nb_batches = -(-n // batch_size)
        k = min(self.lr_updates_per_epoch, nb_batches)
        if k == 1:
            return [(None, float(epoch))]
        order = self._rng.permutation(n)
        bounds = [round(j * nb_batches / k) for j in range(k + 1)]
        return [(order[a * batch_size:b * batch_size], epoch - 1 + ((a + b - 1) / 2 + 1) / nb_batches)
                for a, b in zip(bounds, bounds[1:])]


def _data_digest(x: Any, y: Any) -> str:
    """:func:`~art_generalist.state.fingerprint.tensor_digest` of arrays or tensors ``x`` and ``y``."""
    return tensor_digest(*(t if isinstance(t, torch.Tensor) else torch.as_tensor(np.ascontiguousarray(t))
                           for t in (x, y)))
