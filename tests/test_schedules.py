"""β, learning-rate and distribution schedules, and when the engine applies them."""
from __future__ import annotations

import pytest

from art_generalist.schedules import (
    OFFICIAL_BETA,
    OFFICIAL_LR,
    DistributionSchedule,
    PiecewiseLinear,
    distribution_epochs,
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
