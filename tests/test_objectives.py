"""Objectives map a batch to a loss."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from art_generalist.core.objectives import MART, TRADES, AdversarialCE, NaturalCE, resolve_objective
from tests.conftest import tiny_net


@pytest.fixture
def batch():
    torch.manual_seed(0)
    model = tiny_net(0)
    x = torch.rand(16, 1, 8, 8)
    return model, x, torch.randint(0, 10, (16,)), (x + 0.05 * torch.randn_like(x)).clamp(0, 1)


def test_natural_and_pgd_are_cross_entropy(batch):
    model, x, y, x_adv = batch
    torch.testing.assert_close(NaturalCE()(model, x, y, None).loss, F.cross_entropy(model(x), y))
    torch.testing.assert_close(AdversarialCE()(model, x, y, x_adv).loss, F.cross_entropy(model(x_adv), y))
    assert NaturalCE.attack_loss is None and AdversarialCE.attack_loss == "ce"


def test_trades_reduces_to_ce_without_perturbation(batch):
    model, x, y, x_adv = batch
    torch.testing.assert_close(TRADES(6.0)(model, x, y, x).loss, F.cross_entropy(model(x), y))
    assert TRADES(6.0)(model, x, y, x_adv).loss > TRADES(0.0)(model, x, y, x_adv).loss
    assert TRADES.attack_loss == "kl"


def test_mart_is_finite_and_differentiable(batch):
    model, x, y, x_adv = batch
    out = MART()(model, x, y, x_adv)
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.logits.shape == (16, 10)
    assert all(p.grad is not None for p in model.parameters())


def test_resolve_by_name():
    assert isinstance(resolve_objective("trades"), TRADES)
    assert isinstance(resolve_objective("PGD"), AdversarialCE)
    with pytest.raises(ValueError, match="Unknown objective"):
        resolve_objective("fgsm")
    with pytest.raises(ValueError, match="beta"):
        TRADES(-1)
