"""``GeneralistTrainer``: the Generalist algorithm as a drop-in ART trainer.

The adapter converts user data once (numpy or torch, index or one-hot labels) into unit-range
tensors on the classifier's device and hands batches to the tensor-native engine
(:mod:`art_generalist.generalist`). The global learner leaves as an ART ``PyTorchClassifier``.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Optional, Sequence, Union

import torch
from art.defences.trainer import Trainer
from tqdm.auto import tqdm

from art_generalist import estimators
from art_generalist.attacks import InputSpace, ThreatModel, TrainingAttack, predict_labels, robust_accuracy
from art_generalist.generalist import Generalist, MixWeights
from art_generalist.inputs import check_x, check_y
from art_generalist.learners import Learner, LearnerSpec, sgd
from art_generalist.mixing import ModelEMA, WeightMixer
from art_generalist.objectives import resolve_objective
from art_generalist.schedules import (OFFICIAL_BETA, OFFICIAL_LR, Schedule, distribution_epochs,
                                      resolve_schedule)

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from art.data_generators import DataGenerator
    from art.estimators.classification import PyTorchClassifier

logger = logging.getLogger(__name__)

Batches = Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]


class GeneralistTrainer(Trainer):
    """Generalist (Wang & Wang, CVPR 2023, https://arxiv.org/abs/2303.13813) for ART.

    A natural and a robust base learner (deep copies of the classifier's model with their own
    optimizers) are trained side by side; their EMA teachers are mixed into a global learner
    that is copied back into the base learners after a warm-up. The global learner, returned by
    :meth:`get_classifier`, is the model to ship. Defaults follow the official code
    (PKU-ML/Generalist, see the README's "Faithfulness" section); as with every defence, judge
    it with a strong adaptive evaluation (Athalye et al., 2018; Carlini et al., 2019).

    :param classifier: the user's ART ``PyTorchClassifier`` (left untouched: the trainer works on
        copies). Its loss, ``clip_values``, mean/std ``preprocessing``, ``nb_classes`` and device
        are used.
    :param eps, eps_step, max_iter: the training PGD budget in the classifier's input units
        (ART's names). ``eps > 1`` with clip values (0, 1) is refused (the 0-255 mix-up).
    :param norm: ``"inf"`` or ``2``.
    :param learners: base-learner specifications (:class:`LearnerSpec`), W >= 2; default: a
        robust PGD learner and a natural learner, both with the classifier's optimizer cloned.
        ``LearnerSpec.official()`` gives the released code's optimizers.
    :param ema_decay, ema_warmup: decay of every EMA and the (t+1)/(t+10) warm-up.
    :param beta_schedule: β, the robust teachers' share of the global mix: ``"official"``
        ((0, E/3, 2E/3, E) -> (1, 1, 1, 0.4)), a ``(knots, values)`` pair of fractional knots or a
        callable ``(epoch, nb_epochs) -> β``.
    :param mix_weights: optional callable ``(epoch, nb_epochs) -> weights`` (one per learner).
    :param distribute_start, distribute_every: t' and c; floats are fractions of the epoch
        budget (0.625 and 1/24 give 75 and 5 at 120 epochs), ints are epochs.
    :param distribute_per_iteration: copy G into the learners after every iteration of a
        distribution epoch (official) or once at its end.
    :param mix_buffers: EMA and mix BatchNorm statistics like weights (official) or copy them.
    :param lr_schedule: learning-rate factor schedule for every learner (``"official"``:
        (0, E/3, 2E/3, E) -> (1, 1, 0.1, 0.01); ``None``: constant; or a callable).
    :param shared_lr: all learners follow the first learner's learning rate (official).
    :param per_iteration_schedules: evaluate β and lr at fractional epochs (TMLlib) instead of
        once per epoch (official).
    :param sync_init: start every learner from the classifier's weights (official).
    :param val_max_iter: PGD steps of the per-epoch validation attack on the global learner
        (step 2.5·eps/steps, Madry's rule); 0 disables the attack.
    :param augment: optional tensor-native augmentation of unit-range batches, e.g.
        :func:`art_generalist.augment.random_crop_flip`.
    :param amp: bf16 autocast for every forward pass; ``channels_last``: channels_last memory
        format for 4-D inputs.
    :param verbose: tqdm progress bars per epoch and per batch.
    """

    def __init__(self, classifier: "PyTorchClassifier", eps: float = 8 / 255, eps_step: float = 2 / 255,
                 max_iter: int = 10, norm: Union[str, float] = "inf",
                 learners: Optional[Sequence[LearnerSpec]] = None, ema_decay: float = 0.999,
                 ema_warmup: bool = True, beta_schedule: Union[str, Schedule, tuple] = "official",
                 mix_weights: Optional[MixWeights] = None, distribute_start: Union[int, float] = 0.625,
                 distribute_every: Union[int, float] = 1 / 24, distribute_per_iteration: bool = True,
                 mix_buffers: bool = True, lr_schedule: Union[None, str, Schedule, tuple] = "official",
                 shared_lr: bool = True, per_iteration_schedules: bool = False, sync_init: bool = True,
                 val_max_iter: int = 20, augment: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                 amp: bool = False, channels_last: bool = False, verbose: bool = True) -> None:
        self.eps, self.eps_step, self.max_iter = eps, eps_step, max_iter
        self.norm = ThreatModel.parse(norm)
        self.clip_values = estimators.clip_range(classifier)
        self.mean, self.std = estimators.mean_std(classifier)
        self.specs = list(learners) if learners is not None else [LearnerSpec("robust", "pgd"),
                                                                   LearnerSpec("natural", "natural")]
        self.ema_decay, self.ema_warmup, self.mix_buffers = ema_decay, ema_warmup, mix_buffers
        self.beta_schedule = resolve_schedule(beta_schedule, "beta_schedule", OFFICIAL_BETA)
        self.lr_schedule = resolve_schedule(lr_schedule, "lr_schedule", OFFICIAL_LR)
        self.mix_weights = mix_weights
        self.distribute_start, self.distribute_every = distribute_start, distribute_every
        self.distribute_per_iteration, self.shared_lr = distribute_per_iteration, shared_lr
        self.per_iteration_schedules, self.val_max_iter = per_iteration_schedules, val_max_iter
        self.augment, self.amp, self.channels_last, self.verbose = augment, amp, channels_last, verbose
        self._check_params(beta_schedule)

        self.device = classifier.device
        self.mixer = WeightMixer(mix_buffers=mix_buffers)
        global_model = copy.deepcopy(classifier.model)
        if channels_last:
            global_model = global_model.to(memory_format=torch.channels_last)
        global_clf = estimators.make_classifier(
            classifier, global_model, estimators.clone_optimizer(classifier.optimizer, global_model))
        super().__init__(global_clf)
        self.global_ema = ModelEMA(global_model, ema_decay, ema_warmup, self.mixer, copy=False)
        self.global_space = self._space(global_model)
        self.learners = [self._build_learner(spec, classifier, sync_init) for spec in self.specs]
        self.history: list[dict] = []
        self._epochs_done = 0

    # -- construction ---------------------------------------------------------------------
    def _check_params(self, beta_schedule: Any) -> None:
        for name in ("eps", "eps_step"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0 or not math.isfinite(value):
                raise ValueError(f"`{name}` must be a positive number, got {value!r}.")
        lo, hi = self.clip_values
        if (lo, hi) == (0.0, 1.0) and self.eps > 1:
            raise ValueError(f"`eps`={self.eps} exceeds the (0, 1) input range: eps is in input units "
                             f"(for 8/255 on [0, 1] images pass eps=8/255, not 8).")
        if self.eps > hi - lo:
            raise ValueError(f"`eps`={self.eps} exceeds the clip range width {hi - lo}.")
        if not isinstance(self.max_iter, int) or isinstance(self.max_iter, bool) or self.max_iter < 1:
            raise ValueError(f"`max_iter` must be an integer >= 1, got {self.max_iter!r}.")
        if not isinstance(self.val_max_iter, int) or self.val_max_iter < 0:
            raise ValueError(f"`val_max_iter` must be an integer >= 0, got {self.val_max_iter!r}.")
        if not 0.0 <= self.ema_decay <= 1.0:
            raise ValueError(f"`ema_decay` must lie in [0, 1], got {self.ema_decay}.")
        if isinstance(beta_schedule, (tuple, list)):
            bad = [v for v in beta_schedule[1] if not 0.0 <= float(v) <= 1.0]
            if bad:
                raise ValueError(f"`beta_schedule` values must lie in [0, 1], got {list(beta_schedule[1])}.")
        distribution_epochs(120, self.distribute_start, self.distribute_every)  # validates t' and c
        if len(self.specs) < 2:
            raise ValueError(f"`learners` must hold at least 2 LearnerSpec, got {len(self.specs)}.")
        names = [s.name for s in self.specs]
        if len(set(names)) != len(names):
            raise ValueError(f"Learner names must be unique, got {names}.")
        for spec in self.specs:
            resolve_objective(spec.objective)  # raises on unknown names

    def _space(self, model: torch.nn.Module) -> InputSpace:
        return InputSpace(model, self.clip_values, self.mean, self.std, amp=self.amp,
                          channels_last=self.channels_last)

    def _build_learner(self, spec: LearnerSpec, template: "PyTorchClassifier", sync_init: bool) -> Learner:
        if spec.classifier is not None:
            clf = spec.classifier
        else:
            model = copy.deepcopy(self.global_ema.module)
            if spec.optimizer is not None:
                opt = spec.optimizer(model.parameters())
            elif template.optimizer is not None:
                opt = estimators.clone_optimizer(template.optimizer, model)
            else:
                opt = sgd()(model.parameters())
            clf = estimators.make_classifier(template, model, opt)
        if sync_init:
            self.mixer.copy_(clf.model, self.global_ema.module)  # also checks that the keys match
        objective = resolve_objective(spec.objective, template.loss)
        space = self._space(clf.model)
        attack = None
        if objective.attack_loss is not None:
            attack = TrainingAttack(space, spec.norm if spec.norm is not None else self.norm,
                                    spec.eps if spec.eps is not None else self.eps,
                                    spec.eps_step if spec.eps_step is not None else self.eps_step,
                                    spec.max_iter if spec.max_iter is not None else self.max_iter,
                                    loss=objective.attack_loss)
        schedule = (resolve_schedule(spec.lr_schedule, "lr_schedule", OFFICIAL_LR)
                    if spec.lr_schedule is not None else self.lr_schedule)
        teacher = ModelEMA(clf.model, self.ema_decay, self.ema_warmup, self.mixer)
        return Learner(spec, clf, space, objective, attack, teacher, schedule)

    # -- access ---------------------------------------------------------------------------------
    @property
    def base_classifiers(self) -> dict[str, "PyTorchClassifier"]:
        """The base learners' ART classifiers by name."""
        return {lrn.name: lrn.classifier for lrn in self.learners}

    @property
    def teachers(self) -> dict[str, torch.nn.Module]:
        """The base learners' EMA teachers by name."""
        return {lrn.name: lrn.teacher.module for lrn in self.learners}

    @property
    def robust_classifier(self) -> "PyTorchClassifier":
        return next(lrn.classifier for lrn in self.learners if lrn.attack is not None)

    @property
    def natural_classifier(self) -> "PyTorchClassifier":
        return next(lrn.classifier for lrn in self.learners if lrn.attack is None)

    def predict(self, x: "np.ndarray", batch_size: int = 128, **kwargs: Any) -> "np.ndarray":
        """Predictions of the global learner (ART ``predict``)."""
        return self.get_classifier().predict(x, batch_size=batch_size, **kwargs)

    # -- data at the edge -------------------------------------------------------------------------
    def _to_device(self, x: Any, y: Any, name: str = "x") -> tuple[torch.Tensor, torch.Tensor]:
        clf = self.get_classifier()
        xt = check_x(x, clf.input_shape, self.clip_values, name)
        yt = check_y(y, len(xt), clf.nb_classes, "y" if name == "x" else f"{name}'s labels")
        return self.global_space.to_unit(xt.to(self.device)), yt.to(self.device)

    def _tensor_batches(self, u: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool,
                        drop_last: bool) -> Batches:
        def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            order = torch.randperm(len(u), device=u.device) if shuffle else torch.arange(len(u), device=u.device)
            for idx in order.split(batch_size):
                if drop_last and len(idx) < batch_size:
                    return
                yield u[idx], y[idx]
        return batches

    # -- fitting ----------------------------------------------------------------------------------
    def fit(self, x: Any, y: Any, validation_data: Optional[tuple[Any, Any]] = None, nb_epochs: int = 20,
            batch_size: int = 128, shuffle: bool = True, drop_last: bool = False,
            restore_best: bool = False, **kwargs: Any) -> list[dict]:
        """Train on arrays or tensors ``x`` (within ``clip_values``) and index or one-hot ``y``.

        :param validation_data: ``(x_val, y_val)``; the global learner's clean and PGD accuracy
            on it are logged each epoch (never use test data here).
        :param restore_best: keep the global learner of the epoch with the best validation
            clean + PGD accuracy (requires ``validation_data``).
        :return: the history, one dict per epoch.
        """
        if kwargs:
            raise TypeError(f"Unexpected arguments to fit: {sorted(kwargs)}.")
        self._check_loop_args(nb_epochs, batch_size)
        u, yt = self._to_device(x, y)
        nb_batches = len(u) // batch_size if drop_last else math.ceil(len(u) / batch_size)
        if nb_batches == 0:
            raise ValueError(f"`batch_size`={batch_size} with drop_last leaves no batch for {len(u)} examples.")
        return self._fit(self._tensor_batches(u, yt, batch_size, shuffle, drop_last), nb_batches, nb_epochs,
                         validation_data, restore_best)

    def fit_generator(self, generator: "DataGenerator", nb_epochs: int = 20,
                      validation_data: Optional[tuple[Any, Any]] = None, restore_best: bool = False,
                      **kwargs: Any) -> list[dict]:
        """Train on an ART ``DataGenerator`` (numpy batches, converted one batch at a time)."""
        if kwargs:
            raise TypeError(f"Unexpected arguments to fit_generator: {sorted(kwargs)}.")
        self._check_loop_args(nb_epochs, generator.batch_size)
        nb_batches = math.ceil(generator.size / generator.batch_size)

        def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            for _ in range(nb_batches):
                yield self._to_device(*generator.get_batch())
        return self._fit(batches, nb_batches, nb_epochs, validation_data, restore_best)

    def fit_loader(self, loader: Iterable, nb_epochs: int = 20, validation_data: Optional[tuple[Any, Any]] = None,
                   restore_best: bool = False) -> list[dict]:
        """Tensor-native training on a torch ``DataLoader`` of ``(x, y)`` in input units."""
        self._check_loop_args(nb_epochs, 1)
        nb_classes = self.get_classifier().nb_classes

        def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            for xb, yb in loader:
                xb = xb.to(self.device, torch.float32, non_blocking=True)
                yb = yb.to(self.device, non_blocking=True)
                if yb.dim() == 2 and yb.shape[1] == nb_classes:
                    yb = yb.argmax(1)
                yield self.global_space.to_unit(xb), yb.reshape(-1).long()
        return self._fit(batches, len(loader), nb_epochs, validation_data, restore_best)

    @staticmethod
    def _check_loop_args(nb_epochs: int, batch_size: int) -> None:
        if not isinstance(nb_epochs, int) or isinstance(nb_epochs, bool) or nb_epochs < 1:
            raise ValueError(f"`nb_epochs` must be an integer >= 1, got {nb_epochs!r}.")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"`batch_size` must be an integer >= 1, got {batch_size!r}.")

    def engine(self, nb_epochs: int) -> Generalist:
        """The tensor-native engine configured for a budget of ``nb_epochs``."""
        return Generalist(self.learners, self.global_ema, self.beta_schedule,
                          distribution_epochs(nb_epochs, self.distribute_start, self.distribute_every),
                          mix_weights=self.mix_weights, distribute_per_iteration=self.distribute_per_iteration,
                          shared_lr=self.shared_lr, per_iteration_schedules=self.per_iteration_schedules)

    def _fit(self, batches: Batches, nb_batches: int, nb_epochs: int,
             validation_data: Optional[tuple[Any, Any]], restore_best: bool) -> list[dict]:
        if restore_best and validation_data is None:
            raise ValueError("`restore_best=True` needs `validation_data` (model selection never uses test data).")
        val = self._to_device(*validation_data, name="validation_data") if validation_data is not None else None
        engine = self.engine(nb_epochs)
        best_score, best_state, history = -1.0, None, []
        bar = tqdm(range(1, nb_epochs + 1), desc="Generalist", disable=not self.verbose, unit="epoch")
        for epoch in bar:
            start = time.perf_counter()
            epoch_batches = tqdm(self._augmented(batches()), total=nb_batches, leave=False,
                                 desc=f"epoch {epoch}", disable=not self.verbose, unit="batch")
            record = engine.train_epoch(epoch, nb_epochs, epoch_batches, nb_batches)
            record["seconds"] = time.perf_counter() - start
            if val is not None:
                record.update(self._validate(*val))
                score = record["val_clean_acc"] + (record["val_pgd_acc"] if self.val_max_iter else 0.0)
                if restore_best and score > best_score:
                    best_score, best_state = score, copy.deepcopy(self.global_ema.module.state_dict())
                    record["best"] = True
            history.append(record)
            bar.set_postfix(self._postfix(record))
            logger.info("epoch %d/%d %s", epoch, nb_epochs, self._postfix(record))
        if best_state is not None:
            self.global_ema.module.load_state_dict(best_state)
            logger.info("restored the global learner with the best validation score %.4f", best_score)
        self._epochs_done += nb_epochs
        self.history.extend(history)
        return history

    def _augmented(self, it: Iterator[tuple[torch.Tensor, torch.Tensor]]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.augment is None:
            yield from it
        else:
            for u, y in it:
                yield self.augment(u), y

    def _validate(self, u: torch.Tensor, y: torch.Tensor) -> dict:
        """Global learner's clean and PGD accuracy, with the training RNG stream untouched."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            start = time.perf_counter()
            attack = None
            if self.val_max_iter:
                attack = TrainingAttack(self.global_space, self.norm, self.eps,
                                        2.5 * self.eps / self.val_max_iter, self.val_max_iter)
            clean, adv = robust_accuracy(self.global_space, u, y, attack)
            return {"val_clean_acc": clean, "val_pgd_acc": adv if attack is not None else None,
                    "val_seconds": time.perf_counter() - start}

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
        """(clean, PGD) accuracy of the global learner or a base learner (by name) on ``(x, y)``.

        PGD uses the trainer's threat model and eps with ``pgd_steps`` steps of 2.5·eps/steps;
        ``pgd_steps=0`` returns NaN for PGD. Seeds are left to the caller.
        """
        u, yt = self._to_device(x, y)
        space = self.global_space if model == "global" else next(
            (lrn.space for lrn in self.learners if lrn.name == model), None)
        if space is None:
            raise ValueError(f"Unknown model {model!r}: use 'global' or one of {[l.name for l in self.learners]}.")
        attack = (TrainingAttack(space, self.norm, self.eps, 2.5 * self.eps / pgd_steps, pgd_steps)
                  if pgd_steps else None)
        return robust_accuracy(space, u, yt, attack, batch_size)

    def predict_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Tensor-native predicted labels of the global learner for inputs in input units."""
        return predict_labels(self.global_space, self.global_space.to_unit(x.to(self.device, torch.float32)))
