"""Base learners: what each expert is (:class:`LearnerSpec`), how it takes a step
(:class:`Learner`), and the per-epoch statistics every training loop records (:class:`EpochStats`)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional, Union

import torch
from torch import nn

from art_generalist.core.attack import InputSpace, TrainingAttack
from art_generalist.core.mixing import ModelEMA
from art_generalist.core.objectives import Objective, resolve_objective
from art_generalist.core.schedules import Schedule

if TYPE_CHECKING:  # pragma: no cover
    from art.estimators.classification import PyTorchClassifier

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


#: What a trainer given a classifier without an optimizer says (every trainer refuses it alike).
NO_OPTIMIZER = ("The classifier has no optimizer to train with. Pass one to the PyTorchClassifier, e.g. "
                "PyTorchClassifier(model, ..., optimizer=torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, "
                "weight_decay=5e-4)), as ART's trainers require.")


def sgd(lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 5e-4,
        nesterov: bool = False) -> OptimizerFactory:
    """An SGD factory, e.g. the official robust learner ``sgd(0.01, weight_decay=3.5e-3)``."""
    def factory(params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    return factory


@dataclass
class LearnerSpec:
    """One base learner ("expert") of Generalist.

    :param name: a label used in the history (e.g. ``"robust"``, ``"natural"``, ``"l2"``).
    :param objective: ``"natural"``, ``"pgd"``, ``"trades"``, ``"mart"`` or an :class:`Objective`.
    :param norm, eps, eps_step, max_iter: this learner's threat model and training-attack budget
        in input units; ``None`` takes the trainer's.
    :param optimizer: a factory ``params -> Optimizer``; ``None`` clones the user's estimator's
        optimizer (its class and hyper-parameters) onto the learner's copy of the model.
    :param lr_schedule: this learner's schedule (see :func:`~art_generalist.core.schedules.resolve_schedule`);
        ``None`` takes the trainer's.
    :param classifier: an ART ``PyTorchClassifier`` to use as this base learner (its model and
        optimizer are used as given).
    """

    name: str
    objective: Union[str, Objective] = "pgd"
    norm: Union[None, str, float] = None
    eps: Optional[float] = None
    eps_step: Optional[float] = None
    max_iter: Optional[int] = None
    optimizer: Optional[OptimizerFactory] = None
    lr_schedule: Union[None, str, Schedule] = None
    classifier: Optional["PyTorchClassifier"] = None

    @property
    def is_robust(self) -> bool:
        return resolve_objective(self.objective).attack_loss is not None

    @classmethod
    def official(cls, lr: float = 0.01) -> list["LearnerSpec"]:
        """The released code's two learners: SGD(momentum 0.9), robust weight decay 3.5e-3,
        natural 5e-4, both at the robust learner's learning rate (ResNet-18 settings)."""
        return [cls("robust", "pgd", optimizer=sgd(lr, weight_decay=3.5e-3)),
                cls("natural", "natural", optimizer=sgd(lr, weight_decay=5e-4))]


class StepHooks:
    """What :meth:`Learner.step` calls after the backward pass and after the optimizer step;
    the trainer's plug-ins (:class:`art_generalist.train.plugins.PluginList`) implement it,
    this default does nothing."""

    def reduce_gradients(self, learner: "Learner") -> None:
        """After ``backward``, before the optimizer step (data-parallel averaging, masks)."""

    def after_step(self, learner: "Learner") -> None:
        """After the optimizer step."""


class Learner:
    """A base learner at run time: its ART estimator, model in input space, optimizer,
    training attack, objective, (optional) EMA teacher and the trainer's plug-ins, which
    :meth:`step` calls after the backward pass and after the optimizer step."""

    def __init__(self, spec: LearnerSpec, classifier: Any, space: InputSpace,
                 objective: Objective, attack: Optional[TrainingAttack], teacher: Optional[ModelEMA],
                 schedule: Optional[Schedule], plugins: Optional["StepHooks"] = None) -> None:
        if classifier.optimizer is None:
            raise ValueError(f"Base learner `{spec.name}` has no optimizer.")
        self.spec, self.name, self.classifier = spec, spec.name, classifier
        self.space, self.objective, self.attack, self.teacher = space, objective, attack, teacher
        self.schedule, self.plugins = schedule, plugins if plugins is not None else StepHooks()
        self.optimizer: torch.optim.Optimizer = classifier.optimizer
        lrs = [float(g.get("lr", 0.0)) for g in self.optimizer.param_groups]  # a tensor lr too
        if not all(math.isfinite(lr) and lr >= 0 for lr in lrs):
            raise ValueError(f"Base learner `{spec.name}`: the optimizer's lr must be finite and >= 0, got {lrs}.")
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        #: the learner's optimizer is the user's classifier's optimizer or a clone of it, so a
        #: scheduler of that optimizer (``fit(scheduler=...)``) drives this learner's lr
        self.from_classifier_optimizer = False
        #: while a ``fit(scheduler=...)`` runs: the optimizer whose (scheduled) lr this learner takes
        self.follows: Optional[torch.optim.Optimizer] = None

    @property
    def model(self) -> nn.Module:
        return self.space.model

    def scheduled_lr(self, epoch: float, nb_epochs: int) -> float:
        """The learning rate of the first parameter group at ``epoch`` (the optimizer's own when
        there is no schedule, the followed optimizer's under ``fit(scheduler=...)``)."""
        if self.follows is not None:
            return self.follows.param_groups[0]["lr"]
        if self.schedule is None:
            return self.optimizer.param_groups[0]["lr"]
        return self.base_lrs[0] * self.schedule(epoch, nb_epochs)

    def set_lr(self, lr: float) -> None:
        """Set every group's lr, keeping the groups' ratios to the first group; without a schedule
        the optimizer's lr is left as it is; a followed optimizer's groups are copied one to one."""
        if self.follows is self.optimizer or (self.follows is None and self.schedule is None):
            return
        if self.follows is not None and len(self.follows.param_groups) == len(self.optimizer.param_groups):
            for group, followed in zip(self.optimizer.param_groups, self.follows.param_groups):
                group["lr"] = followed["lr"] * lr / self.follows.param_groups[0]["lr"] if followed["lr"] else lr
            return
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = lr * base / self.base_lrs[0] if self.base_lrs[0] else lr

    def step(self, u: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Attack (eval mode), one optimizer step (train mode), teacher update.

        Returns the loss and the number of correct training predictions as device tensors
        (no host synchronisation).
        """
        x_adv = self.attack(u, y) if self.attack is not None else None
        self.space.train()
        out = self.objective(self.space, u, y, x_adv)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        self.plugins.reduce_gradients(self)
        self.optimizer.step()
        self.plugins.after_step(self)
        if self.teacher is not None:
            self.teacher.update(self.model)
        return out.loss.detach(), (out.logits.detach().argmax(1) == y).sum()


class NonFiniteTrainingError(FloatingPointError):
    """A learner's loss or weights became NaN or infinite; nothing of that epoch was saved."""


class EpochStats:
    """Each learner's loss and training accuracy summed on the device over one epoch, read
    back with one host synchronisation at the end (:meth:`record`), which also stops the run
    with :class:`NonFiniteTrainingError` when a loss or a weight became non-finite (the first
    such iteration is tracked on the device, without a synchronisation per step)."""

    def __init__(self, learners: list[Learner], device: torch.device) -> None:
        self.learners = list(learners)
        self.loss_sum = torch.zeros(len(self.learners), device=device)
        self.correct = torch.zeros(len(self.learners), device=device, dtype=torch.long)
        self.first_bad = torch.zeros(len(self.learners), device=device, dtype=torch.long)  # 0: none yet
        self.seen = self.steps = 0

    def add(self, k: int, loss: torch.Tensor, n_correct: torch.Tensor, n: int) -> None:
        """Learner ``k``'s step on a batch of ``n`` examples."""
        self.loss_sum[k] += loss * n
        self.correct[k] += n_correct
        fresh = (~torch.isfinite(loss)) & (self.first_bad[k] == 0)
        self.first_bad[k] = torch.where(fresh, self.steps + 1, self.first_bad[k])

    def end_step(self, n: int) -> None:
        """One iteration over a batch of ``n`` examples is done."""
        self.seen += n
        self.steps += 1

    def record(self, epoch: int) -> dict:
        """The epoch's history entry (per learner: mean loss, training accuracy, lr, adversarial)."""
        if self.seen == 0:
            raise ValueError("The epoch received no batches.")
        finite = torch.stack([weights_finite(lrn.model).to(self.first_bad.device) for lrn in self.learners])
        bad_steps, finite = self.first_bad.tolist(), finite.tolist()
        for lrn, step, ok in zip(self.learners, bad_steps, finite):
            if step or not ok:
                where = f"at iteration {step} of epoch {epoch}" if step else f"in epoch {epoch}"
                what = "its loss" if step else "its weights"
                raise NonFiniteTrainingError(
                    f"Learner `{lrn.name}`: {what} became NaN or infinite {where} (lr "
                    f"{lrn.optimizer.param_groups[0]['lr']:g}). Training stopped; no checkpoint or export of this "
                    f"epoch was written. Lower the lr, check the data and the mean/std preprocessing.")
        losses, accs = (self.loss_sum / self.seen).tolist(), (self.correct.double() / self.seen).tolist()
        return {"epoch": epoch, "examples": self.seen, "steps": self.steps,
                "learners": {lrn.name: {"loss": losses[k], "train_acc": accs[k],
                                        "lr": lrn.optimizer.param_groups[0]["lr"],
                                        "adversarial": lrn.attack is not None}
                             for k, lrn in enumerate(self.learners)}}


def weights_finite(model: nn.Module) -> torch.Tensor:
    """A device boolean: every floating parameter and buffer of ``model`` is finite (no sync)."""
    tensors = [t.detach() for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
    if not tensors:
        return torch.tensor(True)
    peaks = torch._foreach_norm(tensors, float("inf"))  # max |w| per tensor: NaN and inf propagate
    return torch.isfinite(torch.stack([p.float() for p in peaks])).all()
