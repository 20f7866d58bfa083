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
from art_generalist.persistence import PersistenceMixin, list_checkpoints

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from art.data_generators import DataGenerator
    from art.estimators.classification import PyTorchClassifier

logger = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]
Batches = Callable[[], Iterator[Batch]]


def describe(value: Any) -> Any:
    """A plain, process-independent description of a setting (for checkpoints and reports)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [describe(v) for v in value]
    if hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', '')}.{value.__qualname__}"
    return repr(value)


def resolve_channels_last(value: Union[bool, str], input_shape: tuple) -> bool:
    """``"auto"``: channels_last for image inputs (``input_shape`` of rank 3, channels first)."""
    if value == "auto":
        return len(tuple(input_shape)) == 3
    if not isinstance(value, bool):
        raise ValueError(f"`channels_last` must be True, False or 'auto', got {value!r}.")
    return value


def _check_int(value: Any, name: str, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")


class TensorTrainer(PersistenceMixin, Trainer):
    """Base class: the user's classifier is copied (never modified); training runs on tensors.

    :param classifier: an ART ``PyTorchClassifier`` with ``clip_values`` and mean/std
        ``preprocessing`` (or none).
    :param eps, eps_step, max_iter, norm: the PGD budget in the classifier's input units.
    :param val_max_iter: steps of the per-epoch validation PGD (step 2.5·eps/steps); 0: clean only.
    :param augment: tensor-native augmentation of unit-range batches.
    :param amp: bf16 autocast.
    :param channels_last: channels_last memory format for the model and its 4-D inputs;
        ``"auto"`` (default) turns it on for image classifiers (``input_shape`` of rank 3). The
        arithmetic is the same; convolutions and pooling run faster in this layout.
    :param verbose: tqdm progress bars.
    """

    name = "trainer"

    def __init__(self, classifier: "PyTorchClassifier", eps: float = 8 / 255, eps_step: float = 2 / 255,
                 max_iter: int = 10, norm: Union[str, float] = "inf", val_max_iter: int = 20,
                 augment: Optional[Callable[[torch.Tensor], torch.Tensor]] = None, amp: bool = False,
                 channels_last: Union[bool, str] = "auto", verbose: bool = True) -> None:
        self.eps, self.eps_step, self.max_iter = eps, eps_step, max_iter
        channels_last = resolve_channels_last(channels_last, classifier.input_shape)
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
        self._progress: dict = {"epoch": 0, "nb_epochs": 0, "step_in_epoch": 0, "global_step": 0,
                                "fit_history_start": 0, "best_score": None}
        self._best_state: Optional[dict] = None

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

    def settings(self) -> dict:
        """The trainer's settings as a plain dict (stored in checkpoints and exports)."""
        clf = self.get_classifier()
        return {"trainer": type(self).__name__, "model": f"{type(clf.model).__module__}.{type(clf.model).__qualname__}",
                "input_shape": list(clf.input_shape), "nb_classes": int(clf.nb_classes),
                "clip_values": list(self.clip_values), "mean": [float(v) for v in self.mean],
                "std": [float(v) for v in self.std], "eps": float(self.eps), "eps_step": float(self.eps_step),
                "max_iter": self.max_iter, "norm": self.norm.value, "val_max_iter": self.val_max_iter,
                "augment": describe(self.augment), "amp": self.amp, "channels_last": self.channels_last}

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
            batch_size: int = 128, shuffle: bool = True, drop_last: bool = False, **options: Any) -> list[dict]:
        """Train on ``x`` (within ``clip_values``) and index or one-hot ``y``.

        :param validation_data: ``(x_val, y_val)``: clean and PGD accuracy of the trained model
            each epoch (never pass test data).
        :param options: ``restore_best`` (keep the model of the epoch with the best validation
            clean + PGD accuracy), ``checkpoint_dir``, ``checkpoint_every`` (epochs, default 1),
            ``keep_last`` (checkpoints kept, default 3), ``resume`` (continue from the newest
            checkpoint in ``checkpoint_dir``), ``stop_after`` (return after this epoch of the
            budget, to be resumed later).
        :return: the history of this run, one dict per epoch.
        """
        self._check_loop_args(nb_epochs, batch_size)
        u, y_t = self._to_device(x, y)
        nb_batches = len(u) // batch_size if drop_last else math.ceil(len(u) / batch_size)
        if nb_batches == 0:
            raise ValueError(f"`batch_size`={batch_size} with drop_last leaves no batch for {len(u)} examples.")

        def batches() -> Iterator[Batch]:
            order = torch.randperm(len(u), device=u.device) if shuffle else torch.arange(len(u), device=u.device)
            for idx in order.split(batch_size)[:nb_batches]:
                yield u[idx], y_t[idx]
        return self._fit(batches, nb_batches, nb_epochs, validation_data, **options)

    def fit_generator(self, generator: "DataGenerator", nb_epochs: int = 20,
                      validation_data: Optional[tuple[Any, Any]] = None, **options: Any) -> list[dict]:
        """Train on an ART ``DataGenerator`` (numpy batches, converted one batch at a time);
        ``options`` as :meth:`fit`."""
        self._check_loop_args(nb_epochs, generator.batch_size)
        nb_batches = math.ceil(generator.size / generator.batch_size)

        def batches() -> Iterator[Batch]:
            for _ in range(nb_batches):
                yield self._to_device(*generator.get_batch())
        return self._fit(batches, nb_batches, nb_epochs, validation_data, **options)

    def fit_loader(self, loader: Iterable, nb_epochs: int = 20, validation_data: Optional[tuple[Any, Any]] = None,
                   **options: Any) -> list[dict]:
        """Tensor-native training on a torch ``DataLoader`` of ``(x, y)`` in input units;
        ``options`` as :meth:`fit`."""
        self._check_loop_args(nb_epochs, 1)
        nb_classes = self.get_classifier().nb_classes

        def batches() -> Iterator[Batch]:
            for xb, yb in loader:
                xb = xb.to(self.device, torch.float32, non_blocking=True)
                yb = yb.to(self.device, non_blocking=True)
                if yb.dim() == 2 and yb.shape[1] == nb_classes:
                    yb = yb.argmax(1)
                yield self.global_space.to_unit(xb), yb.reshape(-1).long()
        return self._fit(batches, len(loader), nb_epochs, validation_data, **options)

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

    def _fit(self, batches: Batches, nb_batches: int, nb_epochs: int, validation_data: Optional[tuple[Any, Any]],
             restore_best: bool = False, checkpoint_dir: Optional[str] = None, checkpoint_every: int = 1,
             keep_last: int = 3, resume: bool = False, stop_after: Optional[int] = None) -> list[dict]:
        if restore_best and validation_data is None:
            raise ValueError("`restore_best=True` needs `validation_data` (model selection never uses test data).")
        _check_int(checkpoint_every, "checkpoint_every", 1)
        _check_int(keep_last, "keep_last", 1)
        if resume and checkpoint_dir is None:
            raise ValueError("`resume=True` needs `checkpoint_dir`.")
        if stop_after is not None:
            _check_int(stop_after, "stop_after", 1)
        val = self._to_device(*validation_data, name="validation_data") if validation_data is not None else None
        first = 1
        found = list_checkpoints(checkpoint_dir) if resume else []
        if found:
            self.load_checkpoint(found[-1])
            if self._progress["nb_epochs"] != nb_epochs:
                raise ValueError(f"The checkpoint {found[-1]} belongs to a run of {self._progress['nb_epochs']} "
                                 f"epochs; resume with nb_epochs={self._progress['nb_epochs']}, got {nb_epochs}.")
            first = self._progress["epoch"] + 1
        else:
            self._progress.update(epoch=0, nb_epochs=nb_epochs, step_in_epoch=0, best_score=None,
                                  fit_history_start=len(self.history))
            self._best_state = None
        self._begin_fit(nb_epochs)
        bar = tqdm(range(first, nb_epochs + 1), desc=self.name, disable=not self.verbose, unit="epoch",
                   initial=first - 1, total=nb_epochs)
        for epoch in bar:
            start = time.perf_counter()
            epoch_batches = tqdm(self._augmented(batches()), total=nb_batches, leave=False,
                                 desc=f"epoch {epoch}", disable=not self.verbose, unit="batch")
            record = self._train_epoch(epoch, nb_epochs, epoch_batches, nb_batches)
            record["seconds"] = time.perf_counter() - start
            if val is not None:
                record.update(self._validate(*val))
                score = record["val_clean_acc"] + (record["val_pgd_acc"] or 0.0)
                best = self._progress["best_score"]
                if restore_best and (best is None or score > best):
                    self._progress["best_score"] = score
                    self._best_state = copy.deepcopy(self.global_space.model.state_dict())
                    record["best"] = True
            self.history.append(record)
            self._progress.update(epoch=epoch, global_step=self._progress["global_step"] + record["steps"])
            bar.set_postfix(self._postfix(record))
            logger.info("epoch %d/%d %s", epoch, nb_epochs, self._postfix(record))
            if checkpoint_dir is not None and (epoch % checkpoint_every == 0 or epoch == nb_epochs):
                self._write_epoch_checkpoint(checkpoint_dir, epoch, keep_last)
            if stop_after is not None and epoch >= stop_after and epoch < nb_epochs:
                logger.info("stopping after epoch %d of %d (stop_after)", epoch, nb_epochs)
                break
        else:
            if self._best_state is not None:
                self.global_space.model.load_state_dict(self._best_state)
                logger.info("restored the model with the best validation score %.4f", self._progress["best_score"])
        return self.history[self._progress["fit_history_start"]:]

    def _augmented(self, it: Iterator[Batch]) -> Iterator[Batch]:
        for u, y in it:
            yield (self.augment(u) if self.augment is not None else u), y

    def _validate(self, u: torch.Tensor, y: torch.Tensor) -> dict:
        """Clean and PGD accuracy of the trained model, with the training RNG stream untouched."""
        devices = [self.device.index if self.device.index is not None else torch.cuda.current_device()] \
            if self.device.type == "cuda" else []
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
