"""``TensorTrainer``: the ART edge shared by every trainer of the package.

Arrays enter here (numpy or torch, index or one-hot labels), are checked, and become unit-range
tensors on the classifier's device once; subclasses implement one epoch over those tensors.
The trained model leaves as an ART ``PyTorchClassifier`` (:meth:`get_classifier`).
"""
from __future__ import annotations

import copy
import logging
import math
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Optional, Union

import torch
from art.defences.trainer import Trainer
from tqdm.auto import tqdm

from art_generalist import estimators
from art_generalist.attacks import InputSpace, ThreatModel, TrainingAttack, predict_labels, robust_accuracy
from art_generalist.inputs import check_x, check_y

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from art.data_generators import DataGenerator
    from art.estimators.classification import PyTorchClassifier

logger = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]
Batches = Callable[[], Iterator[Batch]]


def _check_int(value: Any, name: str, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")


class TensorTrainer(Trainer):
    """Base class: the user's classifier is copied (never modified); training runs on tensors.

    :param classifier: an ART ``PyTorchClassifier`` with ``clip_values`` and mean/std
        ``preprocessing`` (or none).
    :param eps, eps_step, max_iter, norm: the PGD budget in the classifier's input units.
    :param val_max_iter: steps of the per-epoch validation PGD (step 2.5·eps/steps); 0: clean only.
    :param augment: tensor-native augmentation of unit-range batches.
    :param amp: bf16 autocast; ``channels_last``: channels_last memory format.
    :param verbose: tqdm progress bars.
    """

    name = "trainer"

    def __init__(self, classifier: "PyTorchClassifier", eps: float = 8 / 255, eps_step: float = 2 / 255,
                 max_iter: int = 10, norm: Union[str, float] = "inf", val_max_iter: int = 20,
                 augment: Optional[Callable[[torch.Tensor], torch.Tensor]] = None, amp: bool = False,
                 channels_last: bool = False, verbose: bool = True) -> None:
        self.eps, self.eps_step, self.max_iter = eps, eps_step, max_iter
        self.norm = ThreatModel.parse(norm)
        self.clip_values = estimators.clip_range(classifier)
        self.mean, self.std = estimators.mean_std(classifier)
        self.val_max_iter, self.augment = val_max_iter, augment
        self.amp, self.channels_last, self.verbose = amp, channels_last, verbose
        self._check_budget()
        self.device = classifier.device
        model = copy.deepcopy(classifier.model)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        super().__init__(estimators.make_classifier(
            classifier, model, estimators.clone_optimizer(classifier.optimizer, model)))
        self.global_space = self.space(model)
        self.history: list[dict] = []

    def _check_budget(self) -> None:
        for name in ("eps", "eps_step"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"`{name}` must be a positive number, got {value!r}.")
        lo, hi = self.clip_values
        if (lo, hi) == (0.0, 1.0) and self.eps > 1:
            raise ValueError(f"`eps`={self.eps} exceeds the (0, 1) input range: eps is in input units "
                             f"(for 8/255 on [0, 1] images pass eps=8/255, not 8).")
        if self.eps > hi - lo:
            raise ValueError(f"`eps`={self.eps} exceeds the clip range width {hi - lo:g}.")
        _check_int(self.max_iter, "max_iter", 1)
        _check_int(self.val_max_iter, "val_max_iter", 0)

    def space(self, model: torch.nn.Module) -> InputSpace:
        """``model`` behind this classifier's input pipeline, fed unit-range inputs."""
        return InputSpace(model, self.clip_values, self.mean, self.std, amp=self.amp,
                          channels_last=self.channels_last)

    # -- what subclasses implement --------------------------------------------------------------
    def _begin_fit(self, nb_epochs: int) -> None:
        """Prepare a run of ``nb_epochs`` (schedules that depend on the budget)."""

    def _train_epoch(self, epoch: int, nb_epochs: int, batches: Iterable[Batch], nb_batches: int) -> dict:
        raise NotImplementedError

    def _models(self) -> dict[str, InputSpace]:
        """Models that :meth:`accuracy` can evaluate, by name."""
        return {"global": self.global_space}

    # -- ART API -----------------------------------------------------------------------------------
    def predict(self, x: "np.ndarray", batch_size: int = 128, **kwargs: Any) -> "np.ndarray":
        """Predictions of the trained (global) model, through ART's ``predict``."""
        return self.get_classifier().predict(x, batch_size=batch_size, **kwargs)

    def fit(self, x: Any, y: Any, validation_data: Optional[tuple[Any, Any]] = None, nb_epochs: int = 20,
            batch_size: int = 128, shuffle: bool = True, drop_last: bool = False,
            restore_best: bool = False, **kwargs: Any) -> list[dict]:
        """Train on ``x`` (within ``clip_values``) and index or one-hot ``y``.

        :param validation_data: ``(x_val, y_val)``: clean and PGD accuracy of the trained model
            each epoch (never pass test data).
        :param restore_best: keep the model of the epoch with the best validation clean + PGD
            accuracy (needs ``validation_data``).
        :return: the history, one dict per epoch.
        """
        if kwargs:
            raise TypeError(f"Unexpected arguments to fit: {sorted(kwargs)}.")
        self._check_loop_args(nb_epochs, batch_size)
        u, y_t = self._to_device(x, y)
        nb_batches = len(u) // batch_size if drop_last else math.ceil(len(u) / batch_size)
        if nb_batches == 0:
            raise ValueError(f"`batch_size`={batch_size} with drop_last leaves no batch for {len(u)} examples.")

        def batches() -> Iterator[Batch]:
            order = torch.randperm(len(u), device=u.device) if shuffle else torch.arange(len(u), device=u.device)
            for idx in order.split(batch_size)[:nb_batches]:
                yield u[idx], y_t[idx]
        return self._fit(batches, nb_batches, nb_epochs, validation_data, restore_best)

    def fit_generator(self, generator: "DataGenerator", nb_epochs: int = 20,
                      validation_data: Optional[tuple[Any, Any]] = None, restore_best: bool = False,
                      **kwargs: Any) -> list[dict]:
        """Train on an ART ``DataGenerator`` (numpy batches, converted one batch at a time)."""
        if kwargs:
            raise TypeError(f"Unexpected arguments to fit_generator: {sorted(kwargs)}.")
        self._check_loop_args(nb_epochs, generator.batch_size)
        nb_batches = math.ceil(generator.size / generator.batch_size)

        def batches() -> Iterator[Batch]:
            for _ in range(nb_batches):
                yield self._to_device(*generator.get_batch())
        return self._fit(batches, nb_batches, nb_epochs, validation_data, restore_best)

    def fit_loader(self, loader: Iterable, nb_epochs: int = 20, validation_data: Optional[tuple[Any, Any]] = None,
                   restore_best: bool = False) -> list[dict]:
        """Tensor-native training on a torch ``DataLoader`` of ``(x, y)`` in input units."""
        self._check_loop_args(nb_epochs, 1)
        nb_classes = self.get_classifier().nb_classes

        def batches() -> Iterator[Batch]:
            for xb, yb in loader:
                xb = xb.to(self.device, torch.float32, non_blocking=True)
                yb = yb.to(self.device, non_blocking=True)
                if yb.dim() == 2 and yb.shape[1] == nb_classes:
                    yb = yb.argmax(1)
                yield self.global_space.to_unit(xb), yb.reshape(-1).long()
        return self._fit(batches, len(loader), nb_epochs, validation_data, restore_best)

    # -- the loop ----------------------------------------------------------------------------------
    @staticmethod
    def _check_loop_args(nb_epochs: int, batch_size: int) -> None:
        _check_int(nb_epochs, "nb_epochs", 1)
        _check_int(batch_size, "batch_size", 1)

    def _to_device(self, x: Any, y: Any, name: str = "x") -> Batch:
        clf = self.get_classifier()
        x_t = check_x(x, clf.input_shape, self.clip_values, name)
        y_t = check_y(y, len(x_t), clf.nb_classes, "y" if name == "x" else f"{name}'s labels")
        return self.global_space.to_unit(x_t.to(self.device)), y_t.to(self.device)

    def _fit(self, batches: Batches, nb_batches: int, nb_epochs: int,
             validation_data: Optional[tuple[Any, Any]], restore_best: bool) -> list[dict]:
        if restore_best and validation_data is None:
            raise ValueError("`restore_best=True` needs `validation_data` (model selection never uses test data).")
        val = self._to_device(*validation_data, name="validation_data") if validation_data is not None else None
        self._begin_fit(nb_epochs)
        best_score, best_state, history = -math.inf, None, []
        bar = tqdm(range(1, nb_epochs + 1), desc=self.name, disable=not self.verbose, unit="epoch")
        for epoch in bar:
            start = time.perf_counter()
            epoch_batches = tqdm(self._augmented(batches()), total=nb_batches, leave=False,
                                 desc=f"epoch {epoch}", disable=not self.verbose, unit="batch")
            record = self._train_epoch(epoch, nb_epochs, epoch_batches, nb_batches)
            record["seconds"] = time.perf_counter() - start
            if val is not None:
                record.update(self._validate(*val))
                score = record["val_clean_acc"] + (record["val_pgd_acc"] or 0.0)
                if restore_best and score > best_score:
                    best_score, best_state = score, copy.deepcopy(self.global_space.model.state_dict())
                    record["best"] = True
            history.append(record)
            bar.set_postfix(self._postfix(record))
            logger.info("epoch %d/%d %s", epoch, nb_epochs, self._postfix(record))
        if best_state is not None:
            self.global_space.model.load_state_dict(best_state)
            logger.info("restored the model with the best validation score %.4f", best_score)
        self.history.extend(history)
        return history

    def _augmented(self, it: Iterator[Batch]) -> Iterator[Batch]:
        for u, y in it:
            yield (self.augment(u) if self.augment is not None else u), y

    def _validate(self, u: torch.Tensor, y: torch.Tensor) -> dict:
        """Clean and PGD accuracy of the trained model, with the training RNG stream untouched."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            start = time.perf_counter()
            clean, adv = robust_accuracy(self.global_space, u, y, self._eval_attack(self.global_space, self.val_max_iter))
            return {"val_clean_acc": clean, "val_pgd_acc": adv if self.val_max_iter else None,
                    "val_seconds": time.perf_counter() - start}

    def _eval_attack(self, space: InputSpace, steps: int) -> Optional[TrainingAttack]:
        """PGD-``steps`` on the trainer's threat model with Madry's step rule 2.5·eps/steps."""
        return TrainingAttack(space, self.norm, self.eps, 2.5 * self.eps / steps, steps) if steps else None

    @staticmethod
    def _postfix(record: dict) -> dict:
        post = {f"{k}_acc": f"{v['train_acc']:.3f}" for k, v in record["learners"].items()}
        if "val_clean_acc" in record:
            post["val"] = f"{record['val_clean_acc']:.3f}"
            if record.get("val_pgd_acc") is not None:
                post["val_pgd"] = f"{record['val_pgd_acc']:.3f}"
        return post

    # -- evaluation helpers -------------------------------------------------------------------------
    def accuracy(self, x: Any, y: Any, model: str = "global", pgd_steps: int = 0,
                 batch_size: int = 512) -> tuple[float, float]:
        """(clean, PGD) accuracy of a model (``"global"`` or a base learner's name) on ``(x, y)``.

        PGD: the trainer's threat model and eps, ``pgd_steps`` steps of 2.5·eps/steps, run only on
        correctly classified points (so PGD <= clean); ``pgd_steps=0`` gives NaN for PGD. This is
        a quick check, not a full evaluation (see AutoAttack).
        """
        models = self._models()
        if model not in models:
            raise ValueError(f"Unknown model {model!r}: use one of {sorted(models)}.")
        u, y_t = self._to_device(x, y)
        return robust_accuracy(models[model], u, y_t, self._eval_attack(models[model], pgd_steps), batch_size)

    def predict_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Tensor-native predicted labels of the trained model for inputs in input units."""
        return predict_labels(self.global_space, self.global_space.to_unit(x.to(self.device, torch.float32)))
