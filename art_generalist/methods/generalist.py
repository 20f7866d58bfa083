"""``GeneralistTrainer``: the Generalist algorithm as a drop-in ART trainer.

The ART edge (data checks, conversion, fit/fit_generator/fit_loader, validation) is
:class:`~art_generalist.train.trainer.TensorTrainer`; the algorithm is
:class:`~art_generalist.methods.engine.Generalist`; the options are
:class:`~art_generalist.train.options.GeneralistConfig`. This module builds the base learners, their
teachers and the global learner from the user's ART classifier.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Optional, Sequence, Union

import torch

from art_generalist import estimators
from art_generalist.core.attack import InputSpace, TrainingAttack
from art_generalist.core.learner import Learner, LearnerSpec, sgd
from art_generalist.core.mixing import ModelEMA, WeightMixer
from art_generalist.core.objectives import resolve_objective
from art_generalist.core.options import describe
from art_generalist.core.schedules import OFFICIAL_ITERATIONS, OFFICIAL_LR, resolve_schedule
from art_generalist.methods.engine import Generalist
from art_generalist.parallel import draws
from art_generalist.sparse.plugin import SparsityPlugin
from art_generalist.train.feed import Batch
from art_generalist.train.options import GeneralistConfig, RuntimeOptions
from art_generalist.train.plugins import Plugin
from art_generalist.train.trainer import TensorTrainer

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

    :param classifier: the user's ART ``PyTorchClassifier``. As with ART's trainers it is trained in
        place: after ``fit`` its model is the global learner and :meth:`get_classifier` returns it
        (``copy_classifier=True`` trains a copy and leaves it untouched). Its loss, ``clip_values``,
        mean/std ``preprocessing``, ``processor``, postprocessing, ``nb_classes`` and device are
        used; the base learners' optimizers clone its optimizer's parameter groups.
    :param eps, eps_step, max_iter, norm: the training PGD budget in the classifier's input units
        (ART's names). ``eps > 1`` with clip values (0, 1) is refused (the 0-255 mix-up).
    :param config: a :class:`~art_generalist.train.options.GeneralistConfig`; default: the official
        settings.
    :param plugins: :class:`~art_generalist.train.plugins.Plugin` instances (masks, frozen parameters,
        gradient reduction).
    :param sparsity: a sparse-training plug-in from :mod:`art_generalist.sparse` (``FlyingBird``,
        ``FlyingBirdPlus``, ``RobustBird``): one mask shared by the base learners, their teachers
        and the global learner, decided on the robust learner.
    :param options: Generalist options by their flat names (``ema_decay=0.9``,
        ``beta_schedule=...``; they override ``config``) and the runtime options
        (``val_max_iter``, ``augment``, ``amp``, ``channels_last``, ``verbose``). The README's
        knob table lists every one with its default and meaning.
    """

    name = "Generalist"

    def __init__(self, classifier: "PyTorchClassifier", eps: float = 8 / 255, eps_step: float = 2 / 255,
                 max_iter: int = 10, norm: Union[str, float] = "inf", config: Optional[GeneralistConfig] = None,
                 plugins: Optional[Sequence[Plugin]] = None, sparsity: Optional[SparsityPlugin] = None,
                 **options: Any) -> None:
        runtime = {k: options.pop(k) for k in RuntimeOptions.flat_names() if k in options}
        self.config = (config or GeneralistConfig()).replace(**options)
        self.specs = (list(self.config.learners) if self.config.learners is not None
                      else [LearnerSpec("robust", "pgd"), LearnerSpec("natural", "natural")])
        super().__init__(classifier, eps=eps, eps_step=eps_step, max_iter=max_iter, norm=norm, plugins=plugins,
                         sparsity=sparsity, **runtime)
        self.lr_schedule = self.config.schedules.lr()
        self.mixer = WeightMixer(mix_buffers=self.config.mixing.mix_buffers)
        decay, _ = self.config.ema.resolve(OFFICIAL_ITERATIONS)  # "auto" is set per run in _begin_fit
        self.global_ema = ModelEMA(self.global_space.model, decay, self.config.ema.warmup, self.mixer, copy=False)
        self.learners = [self._build_learner(spec, classifier) for spec in self.specs]
        self._engine: Optional[Generalist] = None
        self._finish_init()

    # -- construction ---------------------------------------------------------------------
    def _build_learner(self, spec: LearnerSpec, template: "PyTorchClassifier") -> Learner:
        if spec.classifier is not None:
            clf = spec.classifier
        else:
            model = estimators.copy_model(self.global_ema.module)
            params = self.plugins.trainable(spec.name, model)
            if spec.optimizer is not None:
                opt = spec.optimizer(params if params is not None else model.parameters())
            elif template.optimizer is not None:  # the user's parameter groups, each with its own lr, decay
                opt = estimators.clone_optimizer(template.optimizer, model, params, source=template.model)
            else:
                opt = sgd()(params)
            clf = estimators.make_classifier(template, model, opt)
        if self.config.sync_init:
            self.mixer.copy_(clf.model, self.global_ema.module)  # also checks that the keys match
        objective = resolve_objective(spec.objective, template.loss)
        space = self.space(clf.model)
        attack = None
        if objective.attack_loss is not None:
            attack = TrainingAttack(space, spec.norm if spec.norm is not None else self.norm,
                                    spec.eps if spec.eps is not None else self.eps,
                                    spec.eps_step if spec.eps_step is not None else self.eps_step,
                                    spec.max_iter if spec.max_iter is not None else self.max_iter,
                                    loss=objective.attack_loss, draws=draws.sharded)
        schedule = (resolve_schedule(spec.lr_schedule, "lr_schedule", OFFICIAL_LR)
                    if spec.lr_schedule is not None else self.lr_schedule)
        teacher = ModelEMA(clf.model, self.global_ema.decay, self.config.ema.warmup, self.mixer)
        learner = Learner(spec, clf, space, objective, attack, teacher, schedule, self.plugins)
        learner.from_classifier_optimizer = (spec.classifier is None and spec.optimizer is None
                                             and template.optimizer is not None)
        return learner

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

    @property
    def distribution(self):
        """The distribution schedule (t', c, window length) of :attr:`config`."""
        return self.config.distribution.schedule()

    # -- state ---------------------------------------------------------------------------------------
    def settings(self) -> dict:
        learners = [{"name": lrn.name, "objective": repr(lrn.objective),
                     "attack": repr(lrn.attack) if lrn.attack is not None else None,
                     "optimizer": type(lrn.optimizer).__name__, "lr_schedule": describe(lrn.schedule)}
                    for lrn in self.learners]
        return {**super().settings(), **self.config.settings(), "learners": learners}

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
    def engine(self, nb_epochs: int) -> Generalist:
        """The tensor-native engine configured for a budget of ``nb_epochs``."""
        self.distribution.windows(nb_epochs)  # validates t', c and the length for this budget
        return Generalist(self.learners, self.global_ema, self.config)

    def _begin_fit(self, nb_epochs: int, nb_batches: int) -> None:
        decay, warmup_k = self.config.ema.resolve(nb_epochs * nb_batches)
        for ema in [self.global_ema, *(lrn.teacher for lrn in self.learners)]:
            ema.decay, ema.warmup_k = decay, warmup_k
        self._engine = self.engine(nb_epochs)

    def _train_epoch(self, epoch: int, nb_epochs: int, batches: Iterable[Batch], nb_batches: int) -> dict:
        return self._engine.train_epoch(epoch, nb_epochs, batches, nb_batches)

    def _learners(self) -> list[Learner]:
        return list(self.learners)

    def _models(self) -> dict[str, InputSpace]:
        models = {"global": self.global_space, **{lrn.name: lrn.space for lrn in self.learners}}
        models.update({f"teacher:{lrn.name}": self.space(lrn.teacher.module) for lrn in self.learners})
        return models
