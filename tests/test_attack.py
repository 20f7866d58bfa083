"""The training attack: torchattacks PGD behind the ART classifier's own input pipeline."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from art_generalist.core.attack import InputSpace, ThreatModel, TrainingAttack
from art_generalist.estimators import clip_range, mean_std
from tests.conftest import make_classifier, tiny_net


def _space(clf, **kw) -> InputSpace:
    return InputSpace(clf.model, clip_range(clf), *mean_std(clf), **kw)


@pytest.mark.parametrize("clip,prep", [((0.0, 1.0), (0.3, 0.4)), ((0.0, 255.0), (76.0, 96.0)), ((-1.0, 1.0), None)])
def test_input_space_matches_art_predict(digits, clip, prep):
    clf = make_classifier(clip_values=clip, preprocessing=prep if prep else (0.0, 1.0))
    lo, hi = clip
    x = (digits.x_test[:32] * (hi - lo) + lo).astype(np.float32)
    space = _space(clf)
    logits = space(space.to_unit(torch.from_numpy(x))).detach().numpy()
    np.testing.assert_allclose(logits, clf.predict(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("norm", ["inf", 2])
@pytest.mark.parametrize("clip", [(0.0, 1.0), (0.0, 255.0)])
def test_perturbation_within_eps_and_clip(digits, norm, clip):
    clf = make_classifier(clip_values=clip)
    scale = clip[1] - clip[0]
    eps = (0.1 if norm == "inf" else 0.5) * scale
    space = _space(clf)
    x = torch.from_numpy(digits.x_test[:64]) * scale + clip[0]
    y = torch.from_numpy(digits.y_test[:64])
    u = space.to_unit(x)
    x_adv = space.from_unit(TrainingAttack(space, norm, eps, eps / 4, 10)(u, y))
    delta = (x_adv - x).flatten(1)
    size = delta.abs().max(1).values if ThreatModel.parse(norm) is ThreatModel.LINF else delta.norm(dim=1)
    assert float(size.max()) <= eps * (1 + 1e-5)
    assert float(x_adv.min()) >= clip[0] - 1e-5 * scale and float(x_adv.max()) <= clip[1] + 1e-5 * scale
    assert torch.isfinite(x_adv).all()


def _reference_pgd(clf, x, y, eps, step, steps):
    """Plain PGD (no random start) on ART's own loss_gradient, in input units."""
    onehot = np.eye(clf.nb_classes, dtype=np.float32)[y]
    lo, hi = clf.clip_values
    x_adv = x.copy()
    for _ in range(steps):
        grad = clf.loss_gradient(x_adv, onehot)
        x_adv = np.clip(np.clip(x_adv + step * np.sign(grad), x - eps, x + eps), lo, hi)
    return x_adv


@pytest.mark.parametrize("clip", [(0.0, 1.0), (0.0, 255.0)])
def test_agrees_with_reference_pgd_through_preprocessing(digits, clip):
    scale = clip[1] - clip[0]
    clf = make_classifier(clip_values=clip, preprocessing=(0.3 * scale, 0.4 * scale))
    x = (digits.x_test[:48] * scale).astype(np.float32)
    y = digits.y_test[:48]
    eps, step = 0.1 * scale, 0.025 * scale
    space = _space(clf)
    ours = TrainingAttack(space, "inf", eps, step, 7, random_start=False)
    x_ours = space.from_unit(ours(space.to_unit(torch.from_numpy(x)), torch.from_numpy(y))).numpy()
    x_ref = _reference_pgd(clf, x, y, eps, step, 7)
    agree = np.isclose(x_ours, x_ref, atol=1e-4 * scale).mean()
    assert agree > 0.999
    # and the attack works: accuracy drops
    assert (clf.predict(x_ours).argmax(1) == y).mean() < (clf.predict(x).argmax(1) == y).mean()


def test_attack_runs_in_eval_mode_and_restores_training_mode(digits):
    model = tiny_net(0, bn=True)
    clf = make_classifier(model)
    space = _space(clf)
    seen = []
    model.register_forward_hook(lambda m, i, o: seen.append(m.training))
    space.train()
    stats = model[1].running_mean.clone()
    attack = TrainingAttack(space, "inf", 0.1, 0.025, 3)
    attack(torch.from_numpy(digits.x_test[:16]), torch.from_numpy(digits.y_test[:16]))
    assert seen and not any(seen)
    assert space.training and model.training
    assert torch.equal(model[1].running_mean, stats)


def test_attack_raises_the_loss(digits):
    clf = make_classifier()
    clf.fit(digits.x_train, digits.y_train, nb_epochs=2, batch_size=64)
    space = _space(clf)
    u, y = torch.from_numpy(digits.x_test), torch.from_numpy(digits.y_test)
    u_adv = TrainingAttack(space, "inf", 0.1, 0.025, 10)(u, y)
    with torch.no_grad():
        loss = nn.functional.cross_entropy(space(u), y), nn.functional.cross_entropy(space(u_adv), y)
    assert loss[1] > loss[0] + 0.1


def test_kl_attack_is_linf_only():
    space = _space(make_classifier())
    with pytest.raises(ValueError, match="L∞ threat model only"):
        TrainingAttack(space, 2, 0.5, 0.1, 5, loss="kl")
    with pytest.raises(ValueError, match="Unsupported `norm`"):
        ThreatModel.parse(1)
