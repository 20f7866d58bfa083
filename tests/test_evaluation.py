"""Honest evaluation: every integrity check fails on a model built to break it and passes on a sane one."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torchattacks
from torch import nn

from art_generalist.core.attack import InputSpace, ThreatModel
from art_generalist.estimators import clip_range, mean_std
from art_generalist.evaluation import EvaluationReport, evaluate
from art_generalist.evaluation import checks as C
from art_generalist.evaluation.autoattack_adapter import AutoAttackAdapter
from art_generalist.evaluation.pgd import PerturbationStats, pgd
from tests.conftest import make_classifier, tiny_net

MEAN, STD = 0.3053, 0.3760
N, EPS = 64, 0.1
FAST = dict(attacks=("pgd", "cw", "fgsm"), pgd_steps=20)


# -- models built to break one check each ----------------------------------------------------------
class Raw(nn.Module):
    """Wraps a trained net; built with preprocessing (0, 1), so ``forward`` sees x in [0, 1]."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - MEAN) / STD)


class _Scale(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by a per-example sign."""

    @staticmethod
    def forward(ctx, x, sign):
        ctx.save_for_backward(sign)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        (sign,) = ctx.saved_tensors
        return grad * sign, None


class Quantised(Raw):  # step function: zero gradients everywhere
    def forward(self, x):
        return self.logits(torch.round(x * 4) / 4)


class Softmax(Raw):
    def forward(self, x):
        return self.logits(x).softmax(1)


class Noisy(Raw):  # randomised defence
    def forward(self, x):
        return self.logits(x) + 5.0 * torch.randn(len(x), 10)


class SelfUpdating(Raw):  # changes its weights in forward, drifting towards class 0
    def forward(self, x):
        with torch.no_grad():
            self.net[-1].bias[0] += 0.05
        return self.logits(x)


class Reversed(Raw):  # gradients point the wrong way: the attack descends the loss
    def forward(self, x):
        return self.logits(_Scale.apply(x, -torch.ones(len(x), 1, 1, 1)))


class OffGridReversed(Raw):  # true gradient on the 1/16 data grid, reversed off it: FGSM > PGD
    def forward(self, x):
        on_grid = ((x * 16 - torch.round(x * 16)).abs() < 1e-4).flatten(1).all(1)
        return self.logits(_Scale.apply(x, torch.where(on_grid, 1.0, -1.0).view(-1, 1, 1, 1)))


class NanGradient(Raw):  # d sqrt(x)/dx = inf at 0 -> NaN gradients and NaN adversarial inputs
    def forward(self, x):
        return self.logits(x) + 0.0 * torch.sqrt(x).flatten(1).sum(1, keepdim=True)


class Detector(Raw):
    """Answers the memorised label of the nearest stored point once ‖x − x_nn‖∞ > τ (no gradient):
    small perturbations fool it, large ones do not, so accuracy rises with ε."""

    def __init__(self, net, x, y, tau):
        super().__init__(net)
        self.register_buffer("x_mem", torch.as_tensor(x).flatten(1))
        self.register_buffer("y_mem", torch.as_tensor(y))
        self.tau = tau

    def forward(self, x):
        dist = (x.flatten(1)[:, None] - self.x_mem[None]).abs().amax(2)
        d_min, nn_idx = dist.min(1)
        memorised = 10.0 * nn.functional.one_hot(self.y_mem[nn_idx], 10).float()
        return torch.where((d_min > self.tau)[:, None], memorised, self.logits(x))


class SwitchesToTrain(nn.Module):  # puts itself in train mode: BatchNorm uses and updates batch stats
    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_net(1, bn=True)

    def forward(self, x):
        self.train()
        return self.net(x)


# -- fixtures --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(digits):
    """The sane model: tiny CNN trained with ART's ``fit`` for 3 epochs (left in train mode by ART)."""
    clf = make_classifier(tiny_net(0))
    clf.fit(digits.x_train, digits.y_train, nb_epochs=3, batch_size=64)
    return clf


@pytest.fixture(scope="module")
def data(digits):
    return digits.x_test[:N], digits.y_test[:N]


def wrap(trained, cls, *args) -> object:
    return make_classifier(cls(copy.deepcopy(trained.model).eval(), *args), preprocessing=(0.0, 1.0))


def status(report: EvaluationReport) -> dict:
    return {c["name"]: c["passed"] for c in report.checks}


# -- the sane model ----------------------------------------------------------------------------------
def test_sane_model_passes_all_checks(trained, data):
    report = evaluate(trained, *data, eps=EPS, checks="all", **FAST)
    assert report.reliable, report.unreliable_reasons
    assert {k for k, v in status(report).items() if v is None} == {"square_vs_whitebox"}
    assert set(status(report)) == set(C.CHEAP_CHECKS) | set(C.EXPENSIVE_CHECKS)
    assert 0.0 <= report.robust_acc <= min(r["acc"] for r in report.attacks.values()) <= report.clean_acc
    assert report.clean_acc > 0.8 and report.attacks["pgd"]["acc"] < report.clean_acc
    assert report.model_training_on_entry and trained.model.training  # reported, and mode restored


@pytest.mark.parametrize("cls, failing", [
    (Quantised, {"nonzero_gradients", "loss_rises"}),
    (Softmax, {"logits_not_probs"}),
    (Noisy, {"deterministic", "eps_zero"}),
    (SelfUpdating, {"state_unchanged", "deterministic"}),
    (Reversed, {"loss_rises", "large_eps"}),
    (OffGridReversed, {"pgd_le_fgsm"}),
    (NanGradient, {"perturbation_valid", "nonzero_gradients"}),
])
def test_broken_model_fails_its_checks(trained, data, cls, failing):
    torch.manual_seed(0)
    report = evaluate(wrap(trained, cls), *data, eps=EPS, **FAST)
    failed = {k for k, v in status(report).items() if v is False}
    assert failing <= failed, report.checks
    assert not report.reliable and all(any(r.startswith(f) for r in report.unreliable_reasons) for f in failing)
    assert report.robust_acc <= report.clean_acc


def test_accuracy_rising_with_eps_fails_monotone(trained, data):
    report = evaluate(wrap(trained, Detector, data[0], data[1], 0.07), *data, eps=EPS, checks="all", **FAST)
    assert status(report)["monotone_eps"] is False


def test_drifting_model_fails_more_iterations(trained, data):
    report = evaluate(wrap(trained, SelfUpdating), *data, eps=EPS, checks="all", **FAST)
    assert status(report)["more_iterations"] is False


def test_model_switching_to_train_mode_is_caught(data):
    clf = make_classifier(SwitchesToTrain())
    report = evaluate(clf, *data, eps=EPS, **FAST)
    assert status(report)["eval_mode"] is False and status(report)["state_unchanged"] is False


def test_train_mode_on_entry_is_reported_and_evaluated_in_eval_mode(trained, data):
    net = copy.deepcopy(trained.model)
    clf = make_classifier(net)
    reports = {}
    for mode in (True, False):
        net.train(mode)
        reports[mode] = evaluate(clf, *data, eps=EPS, checks=None, **FAST)
        assert net.training is mode
    assert reports[True].model_training_on_entry and not reports[False].model_training_on_entry
    assert reports[True].per_example == reports[False].per_example


# -- the check functions on their own --------------------------------------------------------------
def test_check_functions_on_fabricated_results():
    clean = torch.tensor([True, True, False, True])
    assert C.robust_le_clean(clean, {"pgd": clean & torch.tensor([1, 0, 0, 1]).bool()}, clean & False).passed
    assert not C.robust_le_clean(clean, {"pgd": torch.tensor([1, 0, 1, 0]).bool()}, clean & False).passed
    assert C.monotone_eps({0.0: 0.9, 0.05: 0.6, 0.1: 0.4}, 100).passed
    assert not C.monotone_eps({0.0: 0.9, 0.05: 0.4, 0.1: 0.6}, 100).passed
    assert C.more_iterations(0.5, 0.49, 10, 50, 0.5, 0.48, 3, 100).passed
    assert not C.more_iterations(0.4, 0.5, 10, 50, None, None, 1, 100).passed
    assert not C.more_iterations(None, 0.5, 10, 10, 0.4, 0.5, 3, 100).passed
    square = [{"name": "apgd-ce", "n_broken": 40}, {"name": "square", "n_broken": 3}]
    assert not C.square_vs_whitebox(square, 1000).passed
    assert C.square_vs_whitebox([square[0], {"name": "square", "n_broken": 2}], 1000).passed
    assert C.square_vs_whitebox(square[:1], 1000).passed is None
    ok, too_big = PerturbationStats(0.1, 0.0, 1.0, 0), PerturbationStats(0.1001, 0.0, 1.0, 0)
    assert C.perturbation_valid({"pgd": ok}, 0.1, ThreatModel.LINF).passed
    assert not C.perturbation_valid({"pgd": too_big}, 0.1, ThreatModel.LINF).passed
    assert not C.perturbation_valid({"pgd": PerturbationStats(0.1, -0.01, 1.0, 0)}, 0.1, ThreatModel.LINF).passed


# -- attacks, AutoAttack, report -------------------------------------------------------------------
@pytest.mark.parametrize("norm, eps", [("inf", 0.1), (2, 0.5)])
def test_pgd_matches_torchattacks_for_one_restart(trained, data, norm, eps):
    model = copy.deepcopy(trained.model).eval()
    space = InputSpace(model, clip_range(trained), *mean_std(trained))
    u, y = torch.from_numpy(data[0]), torch.from_numpy(data[1])
    steps, alpha = 10, 2.5 * eps / 10
    ours = pgd(space, u, y, eps=eps, norm=norm, steps=steps, seed=7, batch_size=N)
    cls = torchattacks.PGD if norm == "inf" else torchattacks.PGDL2
    torch.manual_seed(7)
    adv = cls(space, eps=eps, alpha=alpha, steps=steps, random_start=True)(u, y)
    with torch.no_grad():
        theirs = space(adv).argmax(1) == y
    assert torch.equal(ours.robust, theirs)
    assert ours.ce_trace[-1] > ours.ce_trace[0]


def test_eps_zero_equals_clean_and_inputs_untouched(trained, data):
    x, y = data[0].copy(), data[1].copy()
    rng = torch.get_rng_state()
    report = evaluate(trained, x, y, eps=0.0, **FAST)
    assert report.robust_acc == report.clean_acc and all(r["acc"] == report.clean_acc for r in report.attacks.values())
    assert np.array_equal(x, data[0]) and np.array_equal(y, data[1]) and torch.equal(rng, torch.get_rng_state())


def test_units_one_hot_and_no_prints(trained, data, capsys):
    report = evaluate(trained, *data, eps=EPS, checks=None, **FAST)
    scaled = make_classifier(copy.deepcopy(trained.model), clip_values=(0.0, 255.0),
                             preprocessing=(MEAN * 255, STD * 255))
    onehot = np.eye(10, dtype=np.float32)[data[1]]
    other = evaluate(scaled, data[0] * 255, onehot, eps=EPS * 255, checks=None, **FAST)
    assert other.per_example == report.per_example and other.eps_unit == pytest.approx(EPS)
    assert capsys.readouterr().out == ""


def test_json_round_trip(trained, data, tmp_path):
    report = evaluate(trained, *data, eps=EPS, **FAST)
    path = report.to_json(tmp_path / "sub" / "report.json")
    assert list(path.parent.iterdir()) == [path]  # atomic write leaves no temporary file
    loaded = EvaluationReport.from_json(path)
    assert loaded.to_dict() == json.loads(json.dumps(report.to_dict())) and loaded.summary() == report.summary()
    assert "pgd=" in report.summary() and "reliable" in report.summary()


@pytest.mark.parametrize("kwargs, match", [
    (dict(checks="some"), "checks"), (dict(attacks=("pgd", "deepfool")), "attacks"),
    (dict(pgd_steps=0), "pgd_steps"), (dict(eps=-1.0), "eps"), (dict(norm=1), "norm"),
    (dict(attacks=("autoattack",), aa_version="quick"), "aa_version"),
    (dict(eps=8.0), "exceeds the \\(0, 1\\) input range"), (dict(eps=1.5), "exceeds"),
])
def test_bad_arguments_raise(trained, data, kwargs, match):
    with pytest.raises(ValueError, match=match):
        evaluate(trained, *data, **{"eps": EPS, **kwargs})


def test_autoattack_adapter_pyautoattack_fast(trained, data):
    model = copy.deepcopy(trained.model).eval()
    space = InputSpace(model, clip_range(trained), *mean_std(trained))
    u, y = torch.from_numpy(data[0][:8]), torch.from_numpy(data[1][:8])
    rng = torch.get_rng_state()
    adapter = AutoAttackAdapter(space, eps=EPS, version="apgd-ce", seed=0, device="cpu", backend="pyautoattack")
    res = adapter.run(u, y, batch_size=8)
    clean = space(u).argmax(1) == y
    assert adapter.info()["package"] == "pyautoattack" and adapter.info()["package_version"] == "0.2.0"
    assert [r["name"] for r in res.sub_attacks] == ["apgd-ce"] and adapter.budgets()["apgd_restarts"] == 1
    assert not (res.robust & ~clean).any() and (res.x_adv - u).abs().max() <= EPS + 1e-6
    assert torch.equal(rng, torch.get_rng_state())


def test_autoattack_in_evaluate(trained, data):
    report = evaluate(trained, data[0][:16], data[1][:16], eps=EPS, attacks=("pgd", "autoattack"),
                      aa_version="fast", pgd_steps=20)
    aa = report.autoattack
    assert aa["package"] in ("autoattack", "pyautoattack") and aa["sub_attacks"] == ["apgd-ce", "apgd-t"]
    assert set(aa["sub_attacks_run"]) <= {"apgd-ce", "apgd-t"} and report.reliable, report.unreliable_reasons
    assert report.robust_acc <= report.attacks["autoattack"]["acc"] <= report.clean_acc


def test_autoattack_adapter_fra31(trained, data):
    pytest.importorskip("autoattack")
    model = copy.deepcopy(trained.model).eval()
    space = InputSpace(model, clip_range(trained), *mean_std(trained))
    u, y = torch.from_numpy(data[0][:8]), torch.from_numpy(data[1][:8])
    res = AutoAttackAdapter(space, eps=EPS, version="apgd-ce", seed=0, device="cpu", backend="autoattack").run(u, y)
    assert [r["name"] for r in res.sub_attacks] == ["apgd-ce"]


def test_square_beating_white_box_fails(trained, data):
    report = evaluate(wrap(trained, Reversed), data[0][:16], data[1][:16], eps=EPS, attacks=("autoattack",),
                      aa_version=["apgd-ce", "square"])
    assert status(report)["square_vs_whitebox"] is False
    assert report.autoattack["sub_attacks_run"] == ["apgd-ce", "square"]


@pytest.mark.slow
def test_autoattack_standard_end_to_end(trained, data):
    report = evaluate(trained, data[0][:32], data[1][:32], eps=EPS, aa_version="standard")
    assert report.autoattack["sub_attacks"] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert status(report)["square_vs_whitebox"] is not False and report.reliable, report.unreliable_reasons
    assert report.robust_acc <= report.attacks["autoattack"]["acc"] <= report.clean_acc
