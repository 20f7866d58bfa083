"""The ART-facing half of the trainers: ``predict``, ``fit``, ``fit_generator`` and ``fit_loader``
with ART's positional order and keywords, and ``fit(scheduler=...)`` as ART's TRADES and AWP
trainers step it. :class:`~art_generalist.train.trainer.TensorTrainer` runs the loop (``_fit``).
"""
from __future__ import annotations

import functools
import logging
import warnings
from typing import TYPE_CHECKING, Any, Iterable, Optional

import torch

from art_generalist.core.attack import predict_labels
from art_generalist.core.inputs import check_batch
from art_generalist.core.options import check_int
from art_generalist.state import fingerprint
from art_generalist.train.feed import array_batches, generator_batches, loader_batches, nb_array_batches
from art_generalist.train.validation import madry_attack, robust_accuracy

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from art.data_generators import DataGenerator

logger = logging.getLogger(__name__)


class ARTFitAPI:
    """ART's trainer methods over the loop of :class:`~art_generalist.train.trainer.TensorTrainer`."""

    def predict(self, x: "np.ndarray", batch_size: int = 128, **kwargs: Any) -> "np.ndarray":
        """Predictions of the trained (global) model, through ART's ``predict``."""
        return self.get_classifier().predict(x, batch_size=batch_size, **kwargs)

    def fit(self, x: Any, y: Any, validation_data: Optional[tuple[Any, Any]] = None, batch_size: int = 128,
            nb_epochs: int = 20, scheduler: Optional[Any] = None, **options: Any) -> list[dict]:
        """Train on ``x`` (within ``clip_values``) and index or one-hot ``y``.

        The positional order is that of ART's TRADES and AWP trainers.

        :param validation_data: ``(x_val, y_val)``: clean and PGD accuracy of the trained model
            each epoch (never pass test data).
        :param scheduler: a torch lr scheduler of the classifier's optimizer, stepped once after
            each epoch as in ART's TRADES and AWP trainers; it drives the lr of every learner that
            trains with that optimizer or a clone of it (instead of ``lr_schedule``).
        :param options: ``shuffle`` (default True), ``drop_last``, ``restore_best`` (keep the
            model of the epoch with the best validation clean + PGD accuracy), ``checkpoint_dir``,
            ``checkpoint_every`` (epochs, default 1), ``keep_last`` (checkpoints kept, default 3),
            ``resume`` (continue from the newest intact checkpoint in ``checkpoint_dir``; refused when
            the checkpoint's settings, model, optimizer or data differ), ``overwrite`` (delete the
            checkpoints another run left in ``checkpoint_dir``; without it a fresh ``fit`` into such a
            folder is refused), ``stop_after``
            (return after this epoch of the budget, to be resumed later); ART's ``verbose`` (the
            progress bars of this call) and ``training_mode`` (``True`` only; a warning otherwise).
        :return: the history of this run, one dict per epoch.
        """
        shuffle, drop_last = options.pop("shuffle", True), options.pop("drop_last", False)
        options = self._art_keywords(options, "fit")
        self._check_loop_args(nb_epochs, batch_size)
        u, y_t = self._to_device(x, y)
        nb_batches = nb_array_batches(len(u), batch_size, drop_last)
        return self._fit(array_batches(u, y_t, batch_size, nb_batches, shuffle), nb_batches, nb_epochs,
                         validation_data, scheduler=scheduler,
                         data=lambda: fingerprint.array_data(u, y_t, batch_size, shuffle, drop_last), **options)

    def fit_generator(self, generator: "DataGenerator", nb_epochs: int = 20, scheduler: Optional[Any] = None,
                      validation_data: Optional[tuple[Any, Any]] = None, **options: Any) -> list[dict]:
        """Train on an ART ``DataGenerator`` (numpy batches, converted one batch at a time); the
        positional order is that of ART's TRADES trainer; ``scheduler`` and ``options`` as :meth:`fit`."""
        options = self._art_keywords(options, "fit_generator")
        self._check_loop_args(nb_epochs, generator.batch_size)
        nb_batches = nb_array_batches(generator.size, generator.batch_size, drop_last=False)
        return self._fit(generator_batches(generator, nb_batches, self._to_device), nb_batches, nb_epochs,
                         validation_data, scheduler=scheduler,
                         data=lambda: fingerprint.iterable_data("generator", generator, nb_batches), **options)

    def fit_loader(self, loader: Iterable, nb_epochs: int = 20, scheduler: Optional[Any] = None,
                   validation_data: Optional[tuple[Any, Any]] = None, **options: Any) -> list[dict]:
        """Tensor-native training on a torch ``DataLoader`` of ``(x, y)`` in input units;
        ``scheduler`` and ``options`` as :meth:`fit`. Under ``torch.distributed`` give it a
        ``DistributedSampler`` (its ``set_epoch`` is called each epoch)."""
        options = self._art_keywords(options, "fit_loader")
        self._check_loop_args(nb_epochs, 1)
        clf = self.get_classifier()
        check = functools.partial(check_batch, input_shape=clf.input_shape, clip_values=self.clip_values,
                                  nb_classes=clf.nb_classes)
        batches = loader_batches(loader, self.global_space, self.device, clf.nb_classes,
                                 epoch=lambda: self.progress.epoch, check=check)
        return self._fit(batches, len(loader), nb_epochs, validation_data, scheduler=scheduler,
                         data=lambda: fingerprint.iterable_data("loader", loader, len(loader)), **options)

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
        return robust_accuracy(models[model], u, y_t, madry_attack(models[model], self.norm, self.eps, pgd_steps),
                               batch_size)

    def sparsity_report(self) -> dict:
        """Density and FLOPs of sparse training (per layer and global; inference and training FLOPs,
        dense-equivalent and sparse, per epoch and in total; wall-clock seconds). Needs a sparsity
        plug-in (``sparsity=``); see :func:`art_generalist.sparse.report.sparsity_report`."""
        found = [p for p in self.plugins if p.name == "sparsity"]
        if not found:
            raise ValueError("This trainer has no sparsity plug-in: build it with `sparsity=FlyingBird(...)` "
                             "(or FlyingBirdPlus, RobustBird from art_generalist.sparse).")
        return found[0].report(self)

    def predict_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Tensor-native predicted labels of the trained model for inputs in input units."""
        return predict_labels(self.global_space, self.global_space.to_unit(x.to(self.device, torch.float32)))

    #: the keywords of the loop (see :meth:`fit`)
    LOOP_OPTIONS = ("restore_best", "checkpoint_dir", "checkpoint_every", "keep_last", "resume", "overwrite",
                    "stop_after")

    def _art_keywords(self, options: dict, method: str) -> dict:
        """ART's keywords honoured (``verbose``) or warned about (``training_mode=False``); unknown
        keywords refused with the accepted ones."""
        if "verbose" in options:
            self._verbose_call = bool(options.pop("verbose"))
        if not options.pop("training_mode", True):
            warnings.warn(f"{type(self).__name__}.{method}: training_mode=False is ignored; the models train in "
                          f"train mode and are attacked in eval mode.", UserWarning, stacklevel=3)
        unknown = sorted(set(options) - set(self.LOOP_OPTIONS))
        if unknown:
            accepted = ["validation_data", "batch_size", "nb_epochs", "scheduler", "shuffle", "drop_last", "verbose",
                        "training_mode", *self.LOOP_OPTIONS]
            raise TypeError(f"{type(self).__name__}.{method}() got unexpected keyword(s) {unknown}; accepted: "
                            f"{', '.join(accepted)}.")
        return options

    @staticmethod
    def _check_loop_args(nb_epochs: int, batch_size: int) -> None:
        if isinstance(nb_epochs, (tuple, list)):
            raise TypeError("`nb_epochs` is a tuple: pass `validation_data=` by keyword (ART's AWP trainer takes it "
                            "second in fit_generator; here the order is ART TRADES': generator, nb_epochs, scheduler).")
        check_int(nb_epochs, "nb_epochs", 1)
        check_int(batch_size, "batch_size", 1)

    def _attach_scheduler(self, scheduler: Optional[Any]) -> None:
        """Let the learners that train with the classifier's optimizer (or a clone of it) take
        their lr from ``scheduler`` (``None``: back to their own ``lr_schedule``)."""
        if scheduler is not None:
            if not hasattr(scheduler, "step") or getattr(scheduler, "optimizer", None) is not self._user_optimizer:
                raise ValueError("`scheduler` must be a torch lr scheduler of the classifier's optimizer "
                                 "(the optimizer passed to the PyTorchClassifier).")
            driven = [lrn for lrn in self._learners() if lrn.from_classifier_optimizer]
            if not driven:
                raise ValueError("`scheduler` drives no learner: every learner has its own optimizer.")
            for lrn in driven:
                if lrn.schedule is not None and lrn.optimizer is not scheduler.optimizer:
                    logger.info("learner %s: the lr follows fit(scheduler=...) instead of its lr_schedule", lrn.name)
                lrn.follows = scheduler.optimizer
        else:
            for lrn in self._learners():
                lrn.follows = None
        self.scheduler = scheduler

