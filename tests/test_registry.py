"""One registration per objective and per method: resolve_objective, the FLOPs pass count, the
training attack's loss table, the CLI's choices, the benchmark's methods and knobs, the README."""
from __future__ import annotations

import argparse
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torchattacks
from torch import nn

from art_generalist.core import objectives
from art_generalist.core.attack import ATTACK_LOSSES, AttackLoss, InputSpace, ThreatModel, TrainingAttack
from art_generalist.core.objectives import TRADES, Objective, ObjectiveOutput, register_objective, resolve_objective
from art_generalist.methods import GeneralistTrainer, SingleLearnerTrainer, registry
from art_generalist.sparse import SparseFlops
from art_generalist.sparse.report import learner_cost
from tests.conftest import make_classifier

README = Path(__file__).resolve().parents[1] / "README.md"
FAST = dict(eps=0.1, eps_step=0.025, max_iter=2, verbose=False, val_max_iter=0)


@pytest.fixture
def clean_objectives():
    """Leaves the objective registry as it was found."""
    saved = dict(objectives.OBJECTIVES)
    yield
    objectives.OBJECTIVES.clear()
    objectives.OBJECTIVES.update(saved)


def _flops() -> SparseFlops:
    torch.manual_seed(0)
    return SparseFlops.measure(nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 10)), (20,))


def _passes(fl: SparseFlops) -> tuple[float, float, float]:
    return tuple(fl.total(p, sparse=False) for p in ("forward", "backward", "input_backward"))


def test_a_registered_toy_objective_is_resolved_trained_and_counted(clean_objectives):
    @register_objective(aliases=("toy_alias",))
    class Toy(Objective):
        """Three passes of the model per example (say, clean, adversarial and a consistency pass)."""

        name, attack_loss, passes = "toy", "ce", 3

        def __call__(self, model, x, y, x_adv):
            logits = model(x_adv)
            return ObjectiveOutput(nn.functional.cross_entropy(logits, y), logits)

    assert isinstance(resolve_objective("toy"), Toy) and isinstance(resolve_objective("TOY_ALIAS"), Toy)
    with pytest.raises(ValueError, match="'toy'"):  # the error lists it among the names
        resolve_objective("nope")
    trainer = SingleLearnerTrainer(make_classifier(), objective="toy", **FAST)
    (learner,) = trainer._learners()
    assert isinstance(learner.objective, Toy) and learner.attack.loss == "ce"
    fl = _flops()
    forward, backward, input_backward = _passes(fl)
    assert learner_cost(fl, learner, None) == 3 * (forward + backward) + 2 * (forward + input_backward)


def test_declared_pass_counts_give_todays_flops():
    fl = _flops()
    forward, backward, input_backward = _passes(fl)
    attack = {loss: SimpleNamespace(max_iter=5, eps=0.1, loss=loss) for loss in ("ce", "kl")}
    expected = {  # one clean pass for natural/PGD-AT, two for TRADES/MART; one more forward for the KL attack
        "natural": (forward + backward, None),
        "pgd": (forward + backward + 5 * (forward + input_backward), "ce"),
        "trades": (2 * (forward + backward) + 5 * (forward + input_backward) + forward, "kl"),
        "mart": (2 * (forward + backward) + 5 * (forward + input_backward), "ce"),
    }
    for name, (cost, loss) in expected.items():
        objective = resolve_objective(name)
        assert objective.attack_loss == loss
        learner = SimpleNamespace(objective=objective, attack=attack[loss] if loss else None)
        assert learner_cost(fl, learner, None) == cost, name
    assert [objectives.OBJECTIVES[n].passes for n in ("natural", "pgd", "trades", "mart")] == [1, 1, 2, 2]


def test_registration_refuses_incomplete_or_clashing_objectives(clean_objectives):
    class NoPasses(Objective):
        name, attack_loss = "no_passes", "ce"

    with pytest.raises(TypeError, match="passes"):
        register_objective(NoPasses)

    class UnknownLoss(Objective):
        name, attack_loss, passes = "unknown_loss", "fgsm", 1

    with pytest.raises(ValueError, match="unknown attack loss 'fgsm'"):
        register_objective(UnknownLoss)

    class Clash(Objective):
        name, attack_loss, passes = "pgd", "ce", 1

    with pytest.raises(ValueError, match="already registered"):
        register_objective(Clash)

    class Zero(Objective):
        name, attack_loss, passes = "zero", None, 0

    with pytest.raises(ValueError, match="passes"):
        register_objective(Zero)

    class Beta(TRADES):  # inherits TRADES' declarations, its own name
        name = "trades_variant"

    assert register_objective(Beta) is Beta and objectives.OBJECTIVES["trades_variant"].passes == 2
    assert sorted(n for n in objectives.OBJECTIVES if n != "trades_variant") == \
        ["ce", "clean", "mart", "natural", "pgd", "trades"]


def test_attack_losses_map_to_torchattacks_with_todays_errors(monkeypatch):
    space = InputSpace(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), (0.0, 1.0), 0.0, 1.0)
    kinds = {(loss, norm): type(TrainingAttack(space, norm, 0.1, 0.02, 3, loss=loss)._attack)
             for loss, norm in (("ce", "inf"), ("ce", 2), ("kl", "inf"))}
    assert kinds == {("ce", "inf"): torchattacks.PGD, ("ce", 2): torchattacks.PGDL2, ("kl", "inf"): torchattacks.TPGD}
    with pytest.raises(ValueError, match=r"^The TRADES \(KL\) training attack is available for the L∞ threat model "
                                         r"only\.$"):
        TrainingAttack(space, 2, 0.5, 0.1, 5, loss="kl")
    with pytest.raises(ValueError, match=r"^Unknown attack loss 'fgsm': use 'ce' or 'kl'\.$"):
        TrainingAttack(space, "inf", 0.1, 0.02, 3, loss="fgsm")
    # a new attack loss is one entry of the table
    monkeypatch.setitem(ATTACK_LOSSES, "ce_no_start", AttackLoss({ThreatModel.LINF: lambda s, e, a, k, rs:
                                                                  torchattacks.PGD(s, eps=e, alpha=a, steps=k,
                                                                                   random_start=False)}))
    assert not TrainingAttack(space, "inf", 0.1, 0.02, 3, loss="ce_no_start")._attack.random_start


def _train_method_choices() -> list:
    from art_generalist.cli import parser

    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    return next(a for a in sub.choices["train"]._actions if a.dest == "method").choices


def test_cli_benchmark_knobs_and_plugins_read_the_registry():
    from art_generalist.benchmark import fronts, sparse_metrics
    from art_generalist.benchmark.run import METHODS

    assert _train_method_choices() == list(registry.method_names(train=True)) == \
        ["generalist", "pgd_at", "trades", "pgd_ema", "trades_ema", "mart"]
    assert METHODS == registry.method_names(benchmark=True) == (
        "generalist", "art_madry", "art_trades", "art_awp", "pgd_at", "trades", "pgd_ema", "trades_ema", "robust_bird",
        "flying_bird", "flying_bird_plus", "generalist+flying_bird")
    assert fronts.KNOBS == {m.name: m.knob for m in registry.methods() if m.benchmark and m.knob} == {
        "generalist": "final β", "art_trades": "TRADES β", "art_awp": "AWP γ", "trades": "TRADES β",
        "trades_ema": "TRADES β", "robust_bird": "density",
        "flying_bird": "density", "flying_bird_plus": "density", "generalist+flying_bird": "density"}
    assert sparse_metrics.FAMILIES == tuple(m.name for m in registry.methods() if m.sparsity is not None)
    assert {m.name: m.art for m in registry.methods() if m.art} == {"art_madry": "madry", "art_trades": "trades",
                                                                    "art_awp": "awp"}


def test_readme_method_table_is_the_generated_one():
    match = re.search(r"<!-- methods:start -->\n(.*?)\n<!-- methods:end -->", README.read_text(encoding="utf-8"), re.S)
    assert match, "README.md lacks the generated method table markers"
    regenerate = "python -c 'from art_generalist.methods.registry import method_table; print(method_table())'"
    assert match.group(1) == registry.method_table(), f"regenerate the table with: {regenerate}"


def test_each_knob_becomes_the_option_that_sets_it():
    assert registry.get_method("generalist").knob_options(0.2) == {
        "beta_schedule": ((0.0, 1 / 3, 2 / 3, 1.0), (1.0, 1.0, 1.0, 0.2))}
    objective = registry.get_method("trades_ema").knob_options(3)["objective"]
    assert isinstance(objective, TRADES) and objective.beta == 3
    assert registry.get_method("art_trades").knob_options(3) == {"trades_beta": 3.0}
    assert registry.get_method("art_awp").knob_options(0.005) == {"awp_gamma": 0.005}
    assert registry.get_method("flying_bird").knob_options(0.2) == {}  # the benchmark builds its plug-in
    assert registry.get_method("pgd_at").knob_options(None) == registry.get_method("art_awp").knob_options(None) == {}


def test_a_method_builds_its_trainer_and_bad_entries_are_refused():
    trades = registry.get_method("trades").build(make_classifier(), FAST)
    assert isinstance(trades, SingleLearnerTrainer) and isinstance(trades.objective, TRADES)
    assert isinstance(registry.get_method("generalist").build(make_classifier(), FAST), GeneralistTrainer)
    with pytest.raises(ValueError, match="ART runner"):
        registry.get_method("art_madry").build(make_classifier(), FAST)
    with pytest.raises(ValueError, match="Unknown method 'fgsm'"):
        registry.get_method("fgsm")
    before = registry.methods()
    for kwargs, match in [
        (dict(name="pgd_at", trainer=SingleLearnerTrainer, objective="pgd", train=True), "already registered"),
        (dict(name="x@1", trainer=SingleLearnerTrainer), "without '@'"),
        (dict(name="both", trainer=SingleLearnerTrainer, art="madry"), "either"),
        (dict(name="odd", trainer=SingleLearnerTrainer, objective="fgsm"), "unknown objective"),
        (dict(name="art_train", art="madry", objective="pgd", train=True), "benchmark only"),
        (dict(name="sparse_no_knob", trainer=SingleLearnerTrainer, objective="pgd", sparsity=object), "density"),
        (dict(name="nowhere", trainer=SingleLearnerTrainer, benchmark=False), "nowhere"),
    ]:
        name = kwargs.pop("name")
        with pytest.raises(ValueError, match=match):
            registry.register_method(name, "a test entry", **kwargs)
    assert registry.methods() == before
