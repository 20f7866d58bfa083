"""``TransferTrainer``: fine-tune a (robust) source model for a target task, fixed-feature or full-network.

The paper's protocol (Salman et al., NeurIPS 2020): a new head, SGD with momentum
0.9 and weight decay 5e-4, the lr divided by 10 every third of the budget (150 epochs, steps at
50 and 100), and an lr grid of {0.01, 0.001}, selected here on a validation split of the training
data (the paper code selected on the test split). Each grid point runs on the shared engine
(:class:`~art_generalist.SingleLearnerTrainer` with the :class:`TransferFreeze` plug-in), so
checkpoints, exact resume, progress bars, adversarial objectives and plug-ins all apply.
"""
from __future__ import annotations

import logging
import math
import os
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

import numpy as np
import torch
from art.defences.trainer import Trainer

from art_generalist import estimators
from art_generalist.core.objectives import Objective
from art_generalist.methods.single import SingleLearnerTrainer
from art_generalist.train.plugins import Plugin
from art_generalist.train.validation import score
from art_generalist.transfer.heads import MODES, TransferFreeze, find_head, replace_head

if TYPE_CHECKING:  # pragma: no cover
    from art.estimators.classification import PyTorchClassifier

logger = logging.getLogger(__name__)


class StepLR:
    """Learning-rate factor ``gamma ** floor((k - 1) / step)`` in 1-based epoch ``k``; ``step=None`` is a
    third of the budget: torch's ``StepLR(step_size=step, gamma)`` stepped once per epoch.

    A fractional epoch (per-iteration schedules read progress ``e - 1 + (i + 1) / n`` after iteration
    ``i`` of ``n``, in ``(e - 1, e]``) is in epoch ``k = ceil(progress)``, so every iteration of an
    epoch gets that epoch's factor (``floor`` of the progress would decay one epoch late).
    """

    def __init__(self, step: Optional[int] = None, gamma: float = 0.1) -> None:
        if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 1):
            raise ValueError(f"`step_epochs` must be None or an int >= 1, got {step!r}.")
        if not 0 < float(gamma) <= 1:
            raise ValueError(f"`gamma` must be in (0, 1], got {gamma!r}.")
        self.step, self.gamma = step, float(gamma)

    def __call__(self, epoch: float, nb_epochs: int) -> float:
        step = self.step or max(1, round(nb_epochs / 3))
        k = max(math.ceil(epoch - 1e-9), 1)  # the 1-based epoch of (fractional) progress `epoch`
        return self.gamma ** ((k - 1) // step)

    def __repr__(self) -> str:
        return f"StepLR(step={self.step}, gamma={self.gamma})"


class TransferTrainer(Trainer):
    """Fine-tune ``classifier`` (an ART ``PyTorchClassifier`` wrapping the source model, with
    ``nb_classes`` of the target task and the source preprocessing) on the target data.

    :param mode: ``"fixed-feature"`` (only the head trains; BatchNorm statistics frozen unless
        ``update_bn_stats``) or ``"full"``; ``level`` as :func:`~art_generalist.transfer.freeze`.
    :param objective: ``"natural"`` (the paper) or an adversarial objective of the package
        (``"pgd"``, ``"trades"``, ``"mart"`` or an Objective) for downstream robustness.
    :param lr_grid: learning rates tried; the one with the best validation score is kept.
    :param hidden: extra ReLU-Linear widths of the new head.
    :param momentum, weight_decay, step_epochs, gamma: SGD and the step schedule.
    :param validation_split: fraction of the training data held out for the lr selection when
        ``fit`` gets no ``validation_data`` (never test data); ``split_seed`` fixes the split.
    :param plugins: more plug-ins for every grid point.
    :param seed: every grid point trains from this torch seed (same shuffles and random starts for
        each lr; exact resume of any grid point); ``None`` draws it from the global RNG when the
        trainer is built, so ``torch.manual_seed`` before it still fixes the run. Other keyword arguments go to
        :class:`~art_generalist.SingleLearnerTrainer` (``eps``, ``norm``, ``augment``, ``verbose``, ...).
    """

    def __init__(self, classifier: "PyTorchClassifier", mode: str = "fixed-feature",
                 objective: Union[str, Objective] = "natural", lr_grid: Sequence[float] = (0.01, 0.001),
                 level: Optional[int] = None, update_bn_stats: bool = False, hidden: Sequence[int] = (),
                 momentum: float = 0.9, weight_decay: float = 5e-4, step_epochs: Optional[int] = None,
                 gamma: float = 0.1, validation_split: float = 0.1, split_seed: int = 0,
                 plugins: Optional[Sequence[Plugin]] = None, seed: Optional[int] = None, **kwargs: Any) -> None:
        if mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}, got {mode!r}.")
        grid = tuple(lr_grid)
        if not grid or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 for v in grid):
            raise ValueError(f"`lr_grid` must hold positive learning rates, got {lr_grid!r}.")
        if not 0 < validation_split < 1:
            raise ValueError(f"`validation_split` must be in (0, 1), got {validation_split!r}.")
        super().__init__(classifier)
        self.source_classifier = classifier
        self.mode, self.level, self.update_bn_stats, self.objective = mode, level, bool(update_bn_stats), objective
        self.lr_grid, self.momentum, self.weight_decay = tuple(float(v) for v in grid), momentum, weight_decay
        self.schedule = StepLR(step_epochs, gamma)
        self.validation_split, self.split_seed = float(validation_split), int(split_seed)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"`seed` must be None or an int, got {seed!r}.")
        # every grid point trains from this seed: the same shuffles and random starts for each lr (a fair
        # selection), and a grid point's run never depends on how far the others got (exact resume)
        self.seed = int(torch.randint(0, 2**31 - 1, ()).item()) if seed is None else seed
        self.plugins, self.kwargs = list(plugins or []), dict(kwargs)
        if objective == "natural":
            self.kwargs.setdefault("val_max_iter", 0)  # the paper reports clean accuracy
        self.model = self._target_model(classifier, tuple(hidden))
        self.trainers: dict[float, "SingleLearnerTrainer"] = {}
        self.val_scores: dict[float, float] = {}
        self.best_lr: Optional[float] = None
        self._make(self.lr_grid[0])  # fail early on bad settings (mode, level, budget, plug-ins)

    @staticmethod
    def _target_model(classifier: "PyTorchClassifier", hidden: tuple[int, ...]) -> torch.nn.Module:
        """A copy of the source model with a head for ``classifier.nb_classes``, checked on the input shape."""
        model = estimators.copy_model(classifier.model)
        nb_classes = int(classifier.nb_classes)
        if hidden or find_head(model)[1].out_features != nb_classes:
            replace_head(model, nb_classes, hidden)
        shape = tuple(classifier.input_shape)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                out = model(torch.zeros((1, *shape), device=classifier.device))
        except RuntimeError as err:
            raise ValueError(f"The backbone {type(model).__name__} cannot take the classifier's `input_shape` "
                             f"{shape}: {err}") from None
        finally:
            model.train(was_training)
        if tuple(out.shape) != (1, nb_classes):
            raise ValueError(f"The model maps `input_shape` {shape} to outputs of shape {tuple(out.shape)[1:]}, "
                             f"not ({nb_classes},) as `nb_classes` says.")
        return model

    def _make(self, lr: float) -> "SingleLearnerTrainer":
        model = estimators.copy_model(self.model)
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=self.momentum, weight_decay=self.weight_decay)
        clf = estimators.make_classifier(self.source_classifier, model, opt)
        freeze = TransferFreeze(self.mode, self.level, self.update_bn_stats)
        return SingleLearnerTrainer(clf, objective=self.objective, lr_schedule=self.schedule,
                                    plugins=[freeze, *self.plugins], **self.kwargs)

    def _split(self, x: Any, y: Any) -> tuple[Any, Any, Any, Any]:
        n = len(x)
        n_val = int(round(n * self.validation_split))
        if n_val < 1 or n_val >= n:
            raise ValueError(f"`validation_split`={self.validation_split} leaves no validation or no training "
                             f"example out of {n}; pass `validation_data`.")
        order = np.random.default_rng(self.split_seed).permutation(n)
        val, train = order[:n_val], order[n_val:]
        return x[train], y[train], x[val], y[val]

    def fit(self, x: Any, y: Any, validation_data: Optional[tuple[Any, Any]] = None, nb_epochs: int = 150,
            batch_size: int = 64, **options: Any) -> dict[float, list[dict]]:
        """Fine-tune once per learning rate of the grid and keep the best on the validation data.

        :param validation_data: ``(x_val, y_val)`` for the selection; by default ``validation_split``
            of ``(x, y)`` is held out. Never pass test data.
        :param options: as :meth:`art_generalist.SingleLearnerTrainer.fit` (``checkpoint_dir`` gets
            one sub-folder per learning rate, ``resume``, ``restore_best``, ...).
        :return: the history of each learning rate.
        """
        if validation_data is None:
            x, y, x_val, y_val = self._split(x, y)
            validation_data = (x_val, y_val)
        histories: dict[float, list[dict]] = {}
        checkpoint_dir = options.pop("checkpoint_dir", None)
        for lr in self.lr_grid:
            trainer = self._make(lr)
            run_options = dict(options)
            if checkpoint_dir is not None:
                run_options["checkpoint_dir"] = os.path.join(os.fspath(checkpoint_dir), f"lr_{lr:g}")
            with torch.random.fork_rng(devices=self._cuda_devices()):  # the caller's RNG is left as it was
                torch.manual_seed(self.seed)
                histories[lr] = trainer.fit(x, y, validation_data=validation_data, nb_epochs=nb_epochs,
                                            batch_size=batch_size, **run_options)
            best = trainer.best.score if trainer.best.score is not None else None
            self.val_scores[lr] = best if best is not None else score(trainer.history[-1])
            self.trainers[lr] = trainer
            logger.info("lr %g: validation score %.4f", lr, self.val_scores[lr])
        self.best_lr = max(self.lr_grid, key=lambda lr: self.val_scores[lr])  # first of equals: grid order
        self._classifier = self.trainers[self.best_lr].get_classifier()
        self._classifier.model.eval()  # ready for inference and `art_generalist.evaluate`
        logger.info("selected lr %g on the validation data", self.best_lr)
        return histories

    def _cuda_devices(self) -> list[int]:
        device = next(self.model.parameters()).device
        return [device.index if device.index is not None else torch.cuda.current_device()] \
            if device.type == "cuda" else []

    @property
    def trainer(self) -> "SingleLearnerTrainer":
        """The engine trainer of the selected learning rate (after :meth:`fit`)."""
        if self.best_lr is None:
            raise ValueError("No learning rate has been selected yet: call `fit` first.")
        return self.trainers[self.best_lr]

    def get_classifier(self) -> "PyTorchClassifier":
        """The fine-tuned ART classifier (source preprocessing kept); the user's classifier before ``fit``."""
        return self._classifier

    def predict(self, x: "np.ndarray", batch_size: int = 128, **kwargs: Any) -> "np.ndarray":
        """Predictions of the fine-tuned classifier."""
        return self.get_classifier().predict(x, batch_size=batch_size, **kwargs)
