"""``GeneralistTrainer``: the Generalist algorithm as a drop-in ART trainer.

The ART edge (data checks, conversion, fit/fit_generator/fit_loader, validation) is
:class:`~art_generalist.base_trainer.TensorTrainer`; the algorithm is
:class:`~art_generalist.generalist.Generalist`. This module builds the base learners, their
teachers and the global learner from the user's ART classifier.
"""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional, Sequence, Union

import torch

from art_generalist import estimators
from art_generalist.base_trainer import Batch, TensorTrainer, describe
from art_generalist.attacks import InputSpace, TrainingAttack
from art_generalist.generalist import Generalist, MixWeights
from art_generalist.learners import Learner, LearnerSpec, sgd
from art_generalist.mixing import ModelEMA, WeightMixer
from art_generalist.objectives import resolve_objective
from art_generalist.schedules import OFFICIAL_BETA, OFFICIAL_LR, DistributionSchedule, Schedule, resolve_schedule

if TYPE_CHECKING:  # pragma: no cover
    from art.estimators.classification import PyTorchClassifier


class GeneralistTrainer(TensorTrainer):
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
    :param distribute_start, distribute_every, distribute_length: t', c and the length of a
        distribution window; floats are fractions of the epoch budget (0.625, 1/24 and 1/120
        give 75, 5 and 1 epoch at 120 epochs: a short run is the official run compressed), ints
        are epochs. See :class:`~art_generalist.schedules.DistributionSchedule`.
    :param distribute_per_iteration: copy G into the learners after every iteration of a
        window (official) or once at its end.
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
        format for the models and 4-D inputs (``"auto"``: on for image classifiers).
    :param verbose: tqdm progress bars per epoch and per batch.
    """

    def __init__(self, classifier: "PyTorchClassifier", eps: float = 8 / 255, eps_step: float = 2 / 255,
                 max_iter: int = 10, norm: Union[str, float] = "inf",
                 learners: Optional[Sequence[LearnerSpec]] = None, ema_decay: float = 0.999,
                 ema_warmup: bool = True, beta_schedule: Union[str, Schedule, tuple] = "official",
                 mix_weights: Optional[MixWeights] = None, distribute_start: Union[int, float] = 0.625,
                 distribute_every: Union[int, float] = 1 / 24, distribute_length: Union[int, float] = 1 / 120,
                 distribute_per_iteration: bool = True,
                 mix_buffers: bool = True, lr_schedule: Union[None, str, Schedule, tuple] = "official",
                 shared_lr: bool = True, per_iteration_schedules: bool = False, sync_init: bool = True,
                 val_max_iter: int = 20, augment: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                 amp: bool = False, channels_last: Union[bool, str] = "auto", verbose: bool = True) -> None:
        self.specs = list(learners) if learners is not None else [LearnerSpec("robust", "pgd"),
                                                                   LearnerSpec("natural", "natural")]
        self.ema_decay, self.ema_warmup, self.mix_buffers = ema_decay, ema_warmup, mix_buffers
        self.beta_schedule = resolve_schedule(beta_schedule, "beta_schedule", OFFICIAL_BETA)
        self.lr_schedule = resolve_schedule(lr_schedule, "lr_schedule", OFFICIAL_LR)
        self.mix_weights = mix_weights
        self.distribution = DistributionSchedule(distribute_start, distribute_every, distribute_length)
        self.distribute_per_iteration, self.shared_lr = distribute_per_iteration, shared_lr
        self.per_iteration_schedules = per_iteration_schedules
        self._check_params(beta_schedule)
        super().__init__(classifier, eps=eps, eps_step=eps_step, max_iter=max_iter, norm=norm,
                         val_max_iter=val_max_iter, augment=augment, amp=amp, channels_last=channels_last,
                         verbose=verbose)
        self.mixer = WeightMixer(mix_buffers=mix_buffers)
        self.global_ema = ModelEMA(self.global_space.model, ema_decay, ema_warmup, self.mixer, copy=False)
        self.learners = [self._build_learner(spec, classifier, sync_init) for spec in self.specs]
        self._engine: Optional[Generalist] = None

    # -- construction ---------------------------------------------------------------------
    def _check_params(self, beta_schedule: Any) -> None:
        if not 0.0 <= self.ema_decay <= 1.0:
            raise ValueError(f"`ema_decay` must lie in [0, 1], got {self.ema_decay}.")
        if isinstance(beta_schedule, (tuple, list)):
            bad = [v for v in beta_schedule[1] if not 0.0 <= float(v) <= 1.0]
            if bad:
                raise ValueError(f"`beta_schedule` values must lie in [0, 1], got {list(beta_schedule[1])}.")
        if len(self.specs) < 2:
            raise ValueError(f"`learners` must hold at least 2 LearnerSpec, got {len(self.specs)}.")
        names = [s.name for s in self.specs]
        if len(set(names)) != len(names):
            raise ValueError(f"Learner names must be unique, got {names}.")
        for spec in self.specs:
            resolve_objective(spec.objective)  # raises on unknown names

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
        space = self.space(clf.model)
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

    # -- state ---------------------------------------------------------------------------------------
    def settings(self) -> dict:
        learners = [{"name": lrn.name, "objective": repr(lrn.objective),
                     "attack": repr(lrn.attack) if lrn.attack is not None else None,
                     "optimizer": type(lrn.optimizer).__name__, "lr_schedule": describe(lrn.schedule)}
                    for lrn in self.learners]
        return {**super().settings(), "learners": learners, "ema_decay": self.ema_decay,
                "ema_warmup": self.ema_warmup, "beta_schedule": describe(self.beta_schedule),
                "mix_weights": describe(self.mix_weights), "distribution": repr(self.distribution),
                "distribute_per_iteration": self.distribute_per_iteration, "mix_buffers": self.mix_buffers,
                "shared_lr": self.shared_lr, "per_iteration_schedules": self.per_iteration_schedules}

    def _model_state(self) -> dict:
        return {"global": self.global_ema.module.state_dict(), "global_updates": self.global_ema.num_updates,
                "learners": {lrn.name: {"model": lrn.model.state_dict(), "optimizer": lrn.optimizer.state_dict(),
                                        "base_lrs": list(lrn.base_lrs), "teacher": lrn.teacher.module.state_dict(),
                                        "teacher_updates": lrn.teacher.num_updates}
                             for lrn in self.learners}}

    def _load_model_state(self, state: dict) -> None:
        self.global_ema.module.load_state_dict(state["global"])
        self.global_ema.num_updates = int(state["global_updates"])
        for lrn in self.learners:
            saved = state["learners"][lrn.name]
            lrn.model.load_state_dict(saved["model"])
            lrn.optimizer.load_state_dict(saved["optimizer"])
            lrn.base_lrs = list(saved["base_lrs"])
            lrn.teacher.module.load_state_dict(saved["teacher"])
            lrn.teacher.num_updates = int(saved["teacher_updates"])

    # -- the loop ----------------------------------------------------------------------------------
    name = "Generalist"

    def engine(self, nb_epochs: int) -> Generalist:
        """The tensor-native engine configured for a budget of ``nb_epochs``."""
        self.distribution.windows(nb_epochs)  # validates t', c and the length for this budget
        return Generalist(self.learners, self.global_ema, self.beta_schedule, self.distribution,
                          mix_weights=self.mix_weights, distribute_per_iteration=self.distribute_per_iteration,
                          shared_lr=self.shared_lr, per_iteration_schedules=self.per_iteration_schedules)

    def _begin_fit(self, nb_epochs: int) -> None:
        self._engine = self.engine(nb_epochs)

    def _train_epoch(self, epoch: int, nb_epochs: int, batches: Iterable[Batch], nb_batches: int) -> dict:
        return self._engine.train_epoch(epoch, nb_epochs, batches, nb_batches)

    def _models(self) -> dict[str, InputSpace]:
        models = {"global": self.global_space, **{lrn.name: lrn.space for lrn in self.learners}}
        models.update({f"teacher:{lrn.name}": self.space(lrn.teacher.module) for lrn in self.learners})
        return models
