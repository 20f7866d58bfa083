"""β, learning-rate and distribution schedules, and when the engine applies them."""
from __future__ import annotations

import pytest

from art_generalist.core.schedules import (
    OFFICIAL_BETA,
    OFFICIAL_LR,
    DistributionSchedule,
    MultiStep,
    PiecewiseLinear,
    distribution_epochs,
    resolve_schedule,
)


@pytest.mark.parametrize("epoch,beta", [(0, 1.0), (1, 1.0), (40, 1.0), (80, 1.0), (100, 0.7), (120, 0.4), (130, 0.4)])
def test_official_beta_knots(epoch, beta):
    assert OFFICIAL_BETA(epoch, 120) == pytest.approx(beta)


def test_beta_scales_with_budget():
    assert OFFICIAL_BETA(10, 10) == pytest.approx(0.4)
    assert OFFICIAL_BETA(20 / 3, 10) == pytest.approx(1.0)
    assert OFFICIAL_BETA(25 / 3, 10) == pytest.approx(0.7)


@pytest.mark.parametrize("epoch,factor", [(1, 1.0), (40, 1.0), (60, 0.55), (80, 0.1), (120, 0.01)])
def test_official_lr(epoch, factor):
    assert OFFICIAL_LR(epoch, 120) == pytest.approx(factor)


@pytest.mark.parametrize("epoch,factor", [(1, 1.0), (100, 1.0), (100.5, 0.1), (101, 0.1), (150, 0.1),
                                          (150.01, 0.01), (151, 0.01), (200, 0.01)])
def test_multistep_is_the_sparse_papers_schedule(epoch, factor):
    """MultiStepLR(milestones=[100, 150]) of 200 epochs: 1-based epochs 1-100 at lr, 101-150 at lr/10."""
    assert resolve_schedule("multistep", "lr_schedule", OFFICIAL_LR)(epoch, 200) == pytest.approx(factor)


def test_multistep_scales_with_the_budget_and_validates():
    assert [MultiStep()(e, 4) for e in (1, 2, 3, 4)] == pytest.approx([1.0, 1.0, 0.1, 0.01])
    assert MultiStep((5,), gamma=0.5, absolute=True)(6, 999) == 0.5
    with pytest.raises(ValueError, match="non-decreasing"):
        MultiStep((0.75, 0.5))
    with pytest.raises(ValueError, match="lie in \\[0, 1\\]"):
        MultiStep((0.5, 2))
    with pytest.raises(ValueError, match="gamma"):
        MultiStep(gamma=0)
    with pytest.raises(ValueError, match="multistep"):
        resolve_schedule("step", "lr_schedule", OFFICIAL_LR)


def test_absolute_knots_and_validation():
    sched = PiecewiseLinear((0, 10), (0.0, 1.0), absolute=True)
    assert sched(5, 999) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="non-decreasing"):
        PiecewiseLinear((0.5, 0.2), (1, 1))
    with pytest.raises(ValueError, match="lie in \\[0, 1\\]"):
        PiecewiseLinear((0, 2), (1, 1))


def test_official_distribution_epochs():
    expected = list(range(75, 121, 5))
    assert distribution_epochs(120) == expected
    assert distribution_epochs(120, 75, 5) == expected  # absolute values
    assert distribution_epochs(120, 0.625, 5) == expected


def test_distribution_scales_to_short_budgets():
    # the official run compressed: windows 1/12 epoch long ending at 6.25, 6.67, ..., 10
    sched = DistributionSchedule()
    windows = sched.windows(10)
    assert len(windows) == 10 and windows[0] == pytest.approx((6.25 - 1 / 12, 6.25))
    assert windows[-1][1] == pytest.approx(10.0)
    assert distribution_epochs(10) == [7, 8, 9, 10]
    n = 12  # 12 iterations per epoch: exactly one distributing iteration per window
    hits = [(e, i) for e in range(1, 11) for i in range(n) if sched.active(windows, e - 1 + i / n, e - 1 + (i + 1) / n)]
    assert len(hits) == 10 and hits[0] == (7, 2) and hits[-1] == (10, 11)
    assert distribution_epochs(24, 0.5, 0.25, 1) == [12, 18, 24]
    assert distribution_epochs(10, 11, 1, 1) == []


def test_windows_never_missed_by_coarse_iterations():
    sched, n = DistributionSchedule(), 3  # windows far shorter than an iteration
    windows = sched.windows(10)
    hits = sum(sched.active(windows, e - 1 + i / n, e - 1 + (i + 1) / n) for e in range(1, 11) for i in range(n))
    once = sum(sched.active(windows, e - 1 + i / n, e - 1 + (i + 1) / n, per_iteration=False)
               for e in range(1, 11) for i in range(n))
    assert 0 < hits <= 10 and once == hits


@pytest.mark.parametrize("start,every,length,match", [(1.5, 0.1, 1, "fraction"), (0, 1, 1, ">= 1"),
                                                      (5, 0, 1, ">= 1"), ("a", 1, 1, "must be an int"),
                                                      (5, 1, 2, "must not exceed"), (0.5, 0.0, 1, "fraction")])
def test_invalid_distribution_arguments(start, every, length, match):
    with pytest.raises(ValueError, match=match):
        DistributionSchedule(start, every, length)


def test_budget_relative_ema_gives_the_official_values_at_the_official_budget():
    from art_generalist.core.schedules import OFFICIAL_ITERATIONS, budget_relative_ema, ema_decay

    assert OFFICIAL_ITERATIONS == 120 * 391
    decay, k = budget_relative_ema(OFFICIAL_ITERATIONS)
    assert decay == pytest.approx(0.999, abs=1e-12) and k == pytest.approx(10.0, abs=1e-9)
    for t in (0, 9, 100, 5000, 8989, 8990, 8991, 40000):
        assert ema_decay(t, decay, True, k) == pytest.approx(ema_decay(t), abs=1e-12)


@pytest.mark.parametrize("n", [480, 922, 3780, 46920, 10**6])
def test_budget_relative_ema_keeps_the_time_scales_as_fractions(n):
    from art_generalist.core.schedules import budget_relative_ema, ema_decay

    decay, k = budget_relative_ema(n)
    assert 1 / (1 - decay) / n == pytest.approx(1000 / 46920)  # horizon: 2.13% of the run
    reached = next(t for t in range(n) if ema_decay(t, decay, True, k) >= decay - 1e-12)
    assert reached / n == pytest.approx(8990 / 46920, abs=2 / n)  # warm-up ends at 19.2% of the run


def test_budget_relative_ema_without_room_to_average():
    from art_generalist.core.schedules import budget_relative_ema

    assert budget_relative_ema(40) == (0.0, 1.0)
    with pytest.raises(ValueError, match="budget"):
        budget_relative_ema(0)


def test_auto_ema_is_set_from_the_budget_of_each_fit(digits):
    from art_generalist import GeneralistTrainer
    from art_generalist.core.schedules import budget_relative_ema
    from tests.conftest import make_classifier

    trainer = GeneralistTrainer(make_classifier(), eps=0.1, eps_step=0.025, max_iter=1, verbose=False,
                                val_max_iter=0, ema_decay="auto")
    history = trainer.fit(digits.x_train[:320], digits.y_train[:320], nb_epochs=3, batch_size=32)  # 30 iterations
    decay, k = budget_relative_ema(30)
    assert decay == 0.0 and history[-1]["ema_decay"] == 0.0
    trainer.fit(digits.x_train[:640], digits.y_train[:640], nb_epochs=10, batch_size=32)  # 200 iterations
    decay, k = budget_relative_ema(200)
    emas = [trainer.global_ema, *(lrn.teacher for lrn in trainer.learners)]
    assert all(e.decay == decay and e.warmup_k == k for e in emas)
    assert trainer.settings()["ema_decay"] == "auto"
