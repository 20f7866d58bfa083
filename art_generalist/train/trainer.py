"""``TensorTrainer``: the ART edge and the training loop shared by every trainer of the package.

Arrays enter here (numpy or torch, index or one-hot labels), are checked, and become unit-range
tensors on the classifier's device once; subclasses implement one epoch over those tensors.
The trained model leaves as an ART ``PyTorchClassifier`` (:meth:`get_classifier`).
"""
from __future__ import annotations

import abc
import functools
import logging
import time
import warnings
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Optional, Sequence, Union

import torch
from art.defences.trainer import Trainer
from tqdm.auto import tqdm

from art_generalist import estimators
from art_generalist.core.attack import InputSpace, ThreatModel
from art_generalist.core.inputs import check_x, check_y
from art_generalist.core.options import check_int
from art_generalist.parallel import draws, ranks
from art_generalist.train import data_parallel
from art_generalist.train.art_api import ARTFitAPI
from art_generalist.train.checkpoints import Progress, TrainerState
from art_generalist.train.feed import (
    Batch,
    Batches,
)
from art_generalist.train.options import BUDGET, PGDBudget, RuntimeOptions
from art_generalist.train.plugins import Plugin, PluginList
from art_generalist.train.validation import BestModel, score, validate

if TYPE_CHECKING:  # pragma: no cover
    from art.estimators.classification import PyTorchClassifier

    from art_generalist.core.learner import Learner

logger = logging.getLogger(__name__)


class TensorTrainer(ARTFitAPI, TrainerState, Trainer):
    """Base class: trains the user's classifier in place (ART's contract; ``copy_classifier=True``
    trains a copy), on tensors.

    **Contract.** A subclass implements three methods; the loop (:meth:`fit`, :meth:`fit_generator`
    and :meth:`fit_loader` share it) calls them as follows:

    * :meth:`_train_epoch` once per epoch, with the 1-based epoch, the budget, an iterable over
      the epoch's ``(u, y)`` batches (unit-range inputs, index labels, on the device, augmented)
      and their number; it trains and returns the epoch's history entry, which must hold
      ``"steps"`` (optimizer iterations) and ``"learners"`` (per learner: ``loss``, ``train_acc``).
    * :meth:`_model_state` when a checkpoint is written, :meth:`_load_model_state` when one is
      read: every tensor that must survive a restart (models, optimizers, EMA counters).

    Optional: :meth:`_begin_fit` runs once per ``fit`` call with the budget (epochs, batches per
    epoch), after a resume and before the first epoch (and before the plug-ins' ``begin_fit``);
    :meth:`_models` names the models :meth:`accuracy` can evaluate; :meth:`_learners` lists the
    learners that take optimizer steps; :meth:`settings` extends the dict that checkpoints compare.
    Plug-ins (:mod:`art_generalist.train.plugins`) attach at the documented points, set up when
    the outermost ``__init__`` returns, and see the trainer's public view only.

    :param classifier: an ART ``PyTorchClassifier`` with ``clip_values`` and mean/std
        ``preprocessing`` (or none).
    :param eps, eps_step, max_iter, norm: the PGD budget in the classifier's input units
        (:class:`~art_generalist.train.options.PGDBudget`).
    :param plugins: :class:`~art_generalist.train.plugins.Plugin` instances.
    :param sparsity: a sparse-training plug-in (``FlyingBird``, ``FlyingBirdPlus`` or ``RobustBird``
        from :mod:`art_generalist.sparse`), appended to ``plugins``; see :meth:`sparsity_report`.
    :param runtime: ``val_max_iter``, ``augment``, ``amp``, ``channels_last``, ``verbose``, ``sync_batchnorm``
        (:class:`~art_generalist.train.options.RuntimeOptions`).
    """

    name = "trainer"

    def __init__(self, classifier: "PyTorchClassifier", eps: float = BUDGET.eps, eps_step: float = BUDGET.eps_step,
                 max_iter: int = BUDGET.max_iter, norm: Union[str, float] = BUDGET.norm,
                 plugins: Optional[Sequence[Plugin]] = None, sparsity: Optional[Plugin] = None, **runtime: Any) -> None:
        estimators.check_estimator(classifier)
        plugins = list(plugins) if plugins is not None else []
        if sparsity is not None:
            if not isinstance(sparsity, Plugin) or sparsity.name != "sparsity":
                raise TypeError(f"`sparsity` must be a sparsity plug-in (FlyingBird, FlyingBirdPlus or RobustBird from "
                                f"art_generalist.sparse), got {sparsity!r} ({type(sparsity).__name__}).")
            plugins.append(sparsity)
        for plugin in plugins:
            if isinstance(plugin, Plugin):
                plugin.check_model(classifier.model)  # before any copy of a model it refuses
        self.budget = PGDBudget(eps=eps, eps_step=eps_step, max_iter=max_iter, norm=norm)
        self.runtime = RuntimeOptions.from_options(**runtime)
        self.norm = ThreatModel.parse(norm)
        self.clip_values = estimators.clip_range(classifier)
        self.budget.check_range(self.clip_values)
        self.mean, self.std = estimators.mean_std(classifier)
        self.processor = getattr(classifier, "processor", None)
        self.channels_last = self.runtime.use_channels_last(classifier.input_shape, classifier.channels_first)
        self.plugins = PluginList(plugins)
        self.device = classifier.device
        self._user_optimizer = classifier.optimizer  # what fit(scheduler=) must drive, read before any clone below
        # ART's contract: the classifier passed in is the one trained (copy_classifier=True: a copy)
        if self.runtime.copy_classifier:
            trained = estimators.trained_copy(classifier, classifier.model, self.plugins.trainable_for("global"))
            model = trained.model
        else:
            trained, model = classifier, classifier.model
            params = self.plugins.trainable("global", model)
            if classifier.optimizer is not None and len(params) < len(list(model.parameters())):  # plug-ins froze some
                trained._optimizer = estimators.clone_optimizer(classifier.optimizer, model, params)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)  # in place: the parameters stay the same objects
        super().__init__(trained)
        self.global_space = self.space(model)
        estimators.check_same_function(trained, self.global_space)
        self.history: list[dict] = []
        self.progress = Progress()
        self.best = BestModel()
        self.scheduler: Optional[Any] = None  # the torch scheduler of the current fit (``fit(scheduler=...)``)

    # ART's flat names for the budget and the runtime options, read-only
    eps = property(lambda self: self.budget.eps)
    eps_step = property(lambda self: self.budget.eps_step)
    max_iter = property(lambda self: self.budget.max_iter)
    val_max_iter = property(lambda self: self.runtime.val_max_iter)
    augment = property(lambda self: self.runtime.augment)
    amp = property(lambda self: self.runtime.amp)
    #: ``fit(..., verbose=...)`` for the current call (ART's keyword), over the ``verbose`` option
    _verbose_call: Optional[bool] = None
    verbose = property(lambda self: (self.runtime.verbose if self._verbose_call is None else self._verbose_call)
                       and ranks.is_main_process())  # bars on rank 0 only

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Each subclass's ``__init__`` ends with the plug-ins' ``setup``, once, when the outermost returns."""
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return

        @functools.wraps(init)
        def __init__(self: "TensorTrainer", *args: Any, **kw: Any) -> None:
            depth = self.__dict__.get("_init_depth", 0)
            self._init_depth = depth + 1
            try:
                init(self, *args, **kw)
            finally:
                self._init_depth = depth
            if depth == 0:
                self.plugins.setup(self)
        cls.__init__ = __init__  # type: ignore[method-assign]

    # -- the public view plug-ins see (``Plugin`` hooks receive the trainer) -----------------------
    def base_learners(self) -> list["Learner"]:
        """The learners that take optimizer steps, in the order they step."""
        return list(self._learners())

    def models(self) -> dict[str, InputSpace]:
        """The models :meth:`accuracy` can evaluate, by name (``"global"`` first), in input space."""
        return dict(self._models())

    def model_state(self) -> dict:
        """Every tensor a checkpoint holds for the models, optimizers and EMAs."""
        return self._model_state()

    def load_model_state(self, state: dict) -> None:
        self._load_model_state(state)  # what model_state returned, weights copied in place

    def space(self, model: torch.nn.Module) -> InputSpace:
        """``model`` behind this classifier's input pipeline, fed unit-range inputs."""
        return InputSpace(model, self.clip_values, self.mean, self.std, amp=self.amp,
                          channels_last=self.channels_last, processor=self.processor)

    def settings(self) -> dict:
        """The trainer's settings as a plain dict (stored in checkpoints and exports)."""
        clf = self.get_classifier()
        return {"trainer": self._state_name(),
                "model": f"{type(clf.model).__module__}.{type(clf.model).__qualname__}",
                "input_shape": list(clf.input_shape), "nb_classes": int(clf.nb_classes),
                "clip_values": list(self.clip_values), "mean": self.mean.reshape(-1).tolist(),
                "std": self.std.reshape(-1).tolist(), **self.budget.settings(), **self.runtime.settings(),
                "norm": self.norm.value, "channels_last": self.channels_last,  # as resolved
                "plugins": self.plugins.describe()}

    # -- what subclasses implement --------------------------------------------------------------
    @abc.abstractmethod
    def _train_epoch(self, epoch: int, nb_epochs: int, batches: Iterable[Batch], nb_batches: int) -> dict:
        """Train one epoch; return its history entry (see the class docstring)."""

    @abc.abstractmethod
    def _model_state(self) -> dict:
        """Tensors and plain values that a checkpoint must hold to resume exactly."""

    @abc.abstractmethod
    def _load_model_state(self, state: dict) -> None:
        """Restore what :meth:`_model_state` returned."""

    def _begin_fit(self, nb_epochs: int, nb_batches: int) -> None:
        """Prepare a run of ``nb_epochs`` of ``nb_batches`` (schedules that depend on the budget)."""

    def _models(self) -> dict[str, InputSpace]:
        """Models that :meth:`accuracy` can evaluate, by name."""
        return {"global": self.global_space}

    def _learners(self) -> list["Learner"]:
        """The learners that take optimizer steps, in the order they step."""
        return []

    # -- the loop ----------------------------------------------------------------------------------
    def _to_device(self, x: Any, y: Any, name: str = "x") -> Batch:
        clf = self.get_classifier()
        x_t = check_x(x, clf.input_shape, self.clip_values, name)
        y_t = check_y(y, len(x_t), clf.nb_classes, "y" if name == "x" else f"{name}'s labels")
        return self.global_space.to_unit(x_t.to(self.device)), y_t.to(self.device)

    def _fit(self, batches: Batches, nb_batches: int, nb_epochs: int, validation_data: Optional[tuple[Any, Any]],
             restore_best: bool = False, checkpoint_dir: Optional[str] = None, checkpoint_every: int = 1,
             keep_last: int = 3, resume: bool = False, stop_after: Optional[int] = None,
             scheduler: Optional[Any] = None, overwrite: bool = False,
             data: Optional[Callable[[], dict]] = None) -> list[dict]:
        """The loop's entry: ``data`` describes the training data for the checkpoints' fingerprint
        (called only when ``checkpoint_dir`` is given: hashing the arrays costs one host copy)."""
        self._attach_scheduler(scheduler)
        try:
            described = data() if data is not None and checkpoint_dir is not None else None
            return self._run(batches, nb_batches, nb_epochs, validation_data, restore_best, checkpoint_dir,
                             checkpoint_every, keep_last, resume, stop_after, overwrite, described)
        finally:
            self._attach_scheduler(None)
            self._verbose_call = None  # fit(verbose=...) holds for that call only

    def _run(self, batches: Batches, nb_batches: int, nb_epochs: int, validation_data: Optional[tuple[Any, Any]],
             restore_best: bool, checkpoint_dir: Optional[str], checkpoint_every: int, keep_last: int, resume: bool,
             stop_after: Optional[int], overwrite: bool, data: Optional[dict]) -> list[dict]:
        if restore_best and validation_data is None:
            raise ValueError("`restore_best=True` needs `validation_data` (model selection never uses test data).")
        check_int(checkpoint_every, "checkpoint_every", 1)
        check_int(keep_last, "keep_last", 1)
        if resume and checkpoint_dir is None:
            raise ValueError("`resume=True` needs `checkpoint_dir`.")
        if stop_after is not None:
            check_int(stop_after, "stop_after", 1)
        val = self._to_device(*validation_data, name="validation_data") if validation_data is not None else None
        data_parallel.attach(self)  # data-parallel under torch.distributed (art_generalist.train.data_parallel)
        first = self._start_run(nb_epochs, checkpoint_dir, resume, data, overwrite)
        self._begin_fit(nb_epochs, nb_batches)
        self.plugins.begin_fit(self, nb_epochs, nb_batches, lambda: self._augmented(batches()), val)
        bar = tqdm(range(first, nb_epochs + 1), desc=self.name, disable=not self.verbose, unit="epoch",
                   initial=first - 1, total=nb_epochs)
        for epoch in bar:
            start = time.perf_counter()
            epoch_batches = tqdm(self._augmented(batches()), total=nb_batches, leave=False,
                                 desc=f"epoch {epoch}", disable=not self.verbose, unit="batch")
            record = self._train_epoch(epoch, nb_epochs, epoch_batches, nb_batches)
            if self.scheduler is not None:  # once per epoch, after it, as ART's TRADES and AWP trainers do
                self._step_scheduler()
            record["seconds"] = time.perf_counter() - start
            if val is not None:
                record.update(self._validate(*val))
                if restore_best and self.best.offer(score(record), self.global_space.model):
                    record["best"] = True
            self.plugins.after_epoch(self, record)
            self.history.append(record)
            self.progress.epoch, self.progress.global_step = epoch, self.progress.global_step + record["steps"]
            bar.set_postfix(self._postfix(record))
            logger.info("epoch %d/%d %s", epoch, nb_epochs, self._postfix(record))
            self._checkpoint_epoch(checkpoint_dir, epoch, checkpoint_every, keep_last)
            if stop_after is not None and stop_after <= epoch < nb_epochs:
                logger.info("stopping after epoch %d of %d (stop_after)", epoch, nb_epochs)
                break
        else:
            if self.best.restore(self.global_space.model):
                logger.info("restored the model with the best validation score %.4f", self.best.score)
        return self.history[self.progress.fit_history_start:]

    def _step_scheduler(self) -> None:
        """``scheduler.step()``; when only clones of its optimizer train (Generalist), torch's
        warning that the optimizer never stepped is true and expected, so it is not shown."""
        with warnings.catch_warnings():
            if all(lrn.optimizer is not self.scheduler.optimizer for lrn in self._learners()):
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
            self.scheduler.step()

    def _augmented(self, it: Iterator[Batch]) -> Iterator[Batch]:
        for u, y in it:
            yield (draws.sharded(self.augment)(u) if self.augment is not None else u), y

    def _validate(self, u: torch.Tensor, y: torch.Tensor) -> dict:
        """Clean and PGD accuracy of the trained model, with the training RNG stream untouched."""
        return validate(self.global_space, u, y, self.norm, self.eps, self.val_max_iter)

    @staticmethod
    def _postfix(record: dict) -> dict:
        post = {f"{k}_acc": f"{v['train_acc']:.3f}" for k, v in record["learners"].items()}
        if "val_clean_acc" in record:
            post["val"] = f"{record['val_clean_acc']:.3f}"
            if record.get("val_pgd_acc") is not None:
                post["val_pgd"] = f"{record['val_pgd_acc']:.3f}"
        return post
