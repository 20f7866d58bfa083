"""The methods, each registered once: what ``art-generalist train --method`` offers, what the
benchmark runs (``benchmark --methods``, its knobs and fronts) and the README's list of methods.

A method is an entry of :func:`register_method` (timm's ``@register_model`` pattern): its name,
the trainer that builds it from an ART classifier and the PGD budget, its objective (a name of
:data:`art_generalist.core.objectives.OBJECTIVES`; an objective's attack loss and FLOPs passes
are declared on the objective itself), the ART trainer that runs it instead when it is an ART
baseline (run by :class:`art_generalist.benchmark.art_runner.ARTTrainerRun`, which this room may
not import), its sparse-training plug-in, its front knob and a one-line description.

Register a method here, below, before the benchmark and the command line are imported: they
read the registry when they are (``benchmark.run.METHODS``, ``benchmark.fronts.KNOBS``,
``benchmark.sparse_metrics.PLUGINS``). The README's table is :func:`method_table`; a test checks it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

from art_generalist.core.objectives import OBJECTIVES
from art_generalist.methods.generalist import GeneralistTrainer
from art_generalist.methods.single import SingleLearnerTrainer
from art_generalist.sparse import FlyingBird, FlyingBirdPlus, RobustBird

#: Front knobs (``method@value``): how the benchmark reads the value.
FINAL_BETA = "final β"  # Generalist's final β: β knots (0, E/3, 2E/3, E) -> (1, 1, 1, value)
TRADES_BETA = "TRADES β"  # the β of the method's objective (TRADES(value)), or of ART's TRADES trainer
DENSITY = "density"  # the density of the method's sparse plug-in, in (0, 1]
AWP_GAMMA = "AWP γ"  # the weight-perturbation size of ART's AWP trainer, relative to each layer's norm


def generalist_beta(final_beta: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The official β knots with the final value replaced."""
    return (0.0, 1 / 3, 2 / 3, 1.0), (1.0, 1.0, 1.0, final_beta)


@dataclass(frozen=True)
class Method:
    """One registered method (see :func:`register_method`)."""

    name: str
    description: str
    trainer: Optional[Callable[..., Any]] = None
    objective: Optional[str] = None
    art: Optional[str] = None
    knob: Optional[str] = None
    sparsity: Optional[type] = None
    train: bool = False
    benchmark: bool = True
    #: weight averaging of the shipped model: the benchmark gives it Generalist's EMA settings
    averaged: bool = False

    @property
    def is_generalist(self) -> bool:
        """Built by :class:`GeneralistTrainer` (or a subclass): takes Generalist's options."""
        return isinstance(self.trainer, type) and issubclass(self.trainer, GeneralistTrainer)

    def knob_options(self, value: Optional[float]) -> dict:
        """The options that set this method's knob to ``value``: for its trainer (``beta_schedule``,
        ``objective``) or for the benchmark's ART runner (``trades_beta``, ``awp_gamma``). ``{}`` for
        ``None`` and for the density, which the benchmark gives the sparse plug-in it builds."""
        if value is None or self.knob in (None, DENSITY):
            return {}
        if self.knob == FINAL_BETA:
            return {"beta_schedule": generalist_beta(value)}
        if self.knob == AWP_GAMMA:
            return {"awp_gamma": float(value)}
        if self.art is not None:
            return {"trades_beta": float(value)}
        return {"objective": OBJECTIVES[self.objective](value)}

    def build(self, classifier: Any, budget: Mapping[str, Any], **options: Any) -> Any:
        """The trainer: ``trainer(classifier, **budget, objective=..., **options)``, the method's
        objective passed unless ``options`` sets one (or the method has none, as Generalist,
        whose learners have theirs)."""
        if self.trainer is None:
            raise ValueError(f"Method {self.name!r} is ART's {self.art!r} trainer: the benchmark's ART runner "
                             f"(art_generalist.benchmark.art_runner.ARTTrainerRun) runs it.")
        if self.objective is not None:
            options.setdefault("objective", self.objective)
        if self.averaged:
            options.setdefault("ema_decay", "auto")
        return self.trainer(classifier, **budget, **options)


_METHODS: dict[str, Method] = {}


def register_method(name: str, description: str, *, trainer: Optional[Callable[..., Any]] = None,
                    objective: Optional[str] = None, art: Optional[str] = None, knob: Optional[str] = None,
                    sparsity: Optional[type] = None, train: bool = False, benchmark: bool = True,
                    averaged: bool = False) -> Method:
    """Register a method and return its entry.

    :param name: the name of ``--method`` / ``--methods`` (no ``@``, ``:`` or ``,``).
    :param description: one line, for the README's table.
    :param trainer: the trainer class, or any factory ``trainer(classifier, **budget, **options)``
        (``budget``: ``eps``, ``eps_step``, ``max_iter`` and the runtime keywords); ``None`` for an
        ART baseline.
    :param objective: a registered objective name, passed as ``objective=`` to the trainer
        (``None``: the trainer's own, e.g. Generalist's learners').
    :param art: for an ART baseline, the ``method`` of the benchmark's ``ARTTrainerRun``
        (``"madry"``, ``"trades"``); ``objective`` then says what it optimises.
    :param knob: the front knob of ``name@value``: :data:`FINAL_BETA`, :data:`TRADES_BETA`,
        :data:`DENSITY` or ``None``.
    :param sparsity: the sparse-training plug-in class (:mod:`art_generalist.sparse`), built by
        the benchmark at the knob's density.
    :param train: offered by ``art-generalist train --method``; ``benchmark``: by ``--methods``.
    """
    if not isinstance(name, str) or not name or any(c in name for c in "@:, "):
        raise ValueError(f"A method name must be a non-empty string without '@', ':', ',' or spaces, got {name!r}.")
    if name in _METHODS:
        raise ValueError(f"Method {name!r} is already registered.")
    if (trainer is None) == (art is None):
        raise ValueError(f"Method {name!r}: give either `trainer` (a package trainer) or `art` (an ART baseline).")
    if objective is not None and objective.lower() not in OBJECTIVES:
        raise ValueError(f"Method {name!r}: unknown objective {objective!r} (registered: {sorted(OBJECTIVES)}).")
    if art is not None and (train or sparsity is not None):
        raise ValueError(f"Method {name!r}: an ART baseline runs in the benchmark only, without a sparsity plug-in.")
    if knob not in (None, FINAL_BETA, TRADES_BETA, DENSITY, AWP_GAMMA):
        raise ValueError(f"Method {name!r}: `knob` must be None, {FINAL_BETA!r}, {TRADES_BETA!r}, {DENSITY!r} or "
                         f"{AWP_GAMMA!r}.")
    if sparsity is not None and train:
        raise ValueError(f"Method {name!r}: `train --method` builds no sparsity plug-in; a sparse method is "
                         f"benchmark-only (the `sparsity=` option of the trainers takes any plug-in).")
    if (knob == DENSITY) != (sparsity is not None):
        raise ValueError(f"Method {name!r}: a sparse method (and only one) has the {DENSITY!r} knob.")
    if not (train or benchmark):
        raise ValueError(f"Method {name!r} is offered nowhere: set `train` or `benchmark`.")
    entry = Method(name, description, trainer, objective, art, knob, sparsity, bool(train), bool(benchmark),
                   bool(averaged))
    _METHODS[name] = entry
    return entry


def get_method(name: str) -> Method:
    """The entry of a registered method."""
    try:
        return _METHODS[name]
    except (KeyError, TypeError):
        raise ValueError(f"Unknown method {name!r}: choose from {list(_METHODS)}.") from None


def methods() -> tuple[Method, ...]:
    """Every registered method, in registration order."""
    return tuple(_METHODS.values())


def method_names(*, train: Optional[bool] = None, benchmark: Optional[bool] = None) -> tuple[str, ...]:
    """Names in registration order; ``train=True`` / ``benchmark=True`` keeps those offered there."""
    return tuple(m.name for m in _METHODS.values()
                 if (train is None or m.train == train) and (benchmark is None or m.benchmark == benchmark))


def method_table() -> str:
    """The README's table of methods (Markdown)."""
    lines = ["| method | trained by | objective | knob (`@value`) | `train --method` | `benchmark --methods` "
             "| what it is |",
             "|---|---|---|---|---|---|---|"]
    for m in _METHODS.values():
        by = f"ART's `{m.art}` trainer" if m.art else f"`{getattr(m.trainer, '__name__', m.trainer)}`"
        if m.sparsity is not None:
            by += f" + `{m.sparsity.__name__}`"
        objective = f"`{m.objective}`" if m.objective else "its learners'"
        cells = (f"`{m.name}`", by, objective, m.knob or "—", "yes" if m.train else "—",
                 "yes" if m.benchmark else "—", m.description)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


register_method("generalist", "Generalist (Wang & Wang, CVPR 2023): a natural and a robust base learner, their EMA "
                "teachers mixed into the global learner, the shipped model",
                trainer=GeneralistTrainer, knob=FINAL_BETA, train=True)
register_method("art_madry", "ART's `AdversarialTrainerMadryPGD`, given a fair run (same budget, workarounds listed)",
                art="madry", objective="pgd")
register_method("art_trades", "ART's `AdversarialTrainerTRADESPyTorch`, given a fair run (its inner attack is "
                "ART's CE-PGD, not the paper's KL attack)", art="trades", objective="trades", knob=TRADES_BETA)
register_method("art_awp", "ART's `AdversarialTrainerAWPPyTorch` (adversarial weight perturbation, PGD mode), "
                "given a fair run", art="awp", objective="pgd", knob=AWP_GAMMA)
register_method("pgd_at", "Madry PGD adversarial training of one model", trainer=SingleLearnerTrainer,
                objective="pgd", train=True)
register_method("trades", "TRADES (Zhang et al., 2019) with its KL inner attack", trainer=SingleLearnerTrainer,
                objective="trades", knob=TRADES_BETA, train=True)
register_method("pgd_ema", "PGD-AT shipping an EMA of its weights (Generalist's averaging, the fair control)",
                trainer=SingleLearnerTrainer, objective="pgd", train=True, averaged=True)
register_method("trades_ema", "TRADES shipping an EMA of its weights (Generalist's averaging)",
                trainer=SingleLearnerTrainer, objective="trades", knob=TRADES_BETA, train=True, averaged=True)
register_method("mart", "MART (Wang et al., ICLR 2020) with CE-PGD examples", trainer=SingleLearnerTrainer,
                objective="mart", train=True, benchmark=False)
register_method("robust_bird", "PGD-AT with Robust Bird: an early-bird mask search, then a fixed mask "
                "(Chen et al., ICLR 2022)", trainer=SingleLearnerTrainer, objective="pgd", knob=DENSITY,
                sparsity=RobustBird)
register_method("flying_bird", "PGD-AT with Flying Bird: dynamic sparse training (prune and grow)",
                trainer=SingleLearnerTrainer, objective="pgd", knob=DENSITY, sparsity=FlyingBird)
register_method("flying_bird_plus", "PGD-AT with Flying Bird+: adaptive prune and grow (needs validation data)",
                trainer=SingleLearnerTrainer, objective="pgd", knob=DENSITY, sparsity=FlyingBirdPlus)
register_method("generalist+flying_bird", "Generalist with Flying Bird: one mask shared by every learner",
                trainer=GeneralistTrainer, knob=DENSITY, sparsity=FlyingBird)
