"""Every bad input is a clear error naming the argument and the value received."""
from __future__ import annotations

import numpy as np
import pytest

from art_generalist import GeneralistTrainer, LearnerSpec
from tests.conftest import FAST, make_classifier


@pytest.fixture(scope="module")
def trainer():
    return GeneralistTrainer(make_classifier(), **FAST)


@pytest.fixture
def xy(digits):
    return digits.x_train[:64].copy(), digits.y_train[:64].copy()


def _nan(x):
    x[0, 0, 0, 0] = np.nan
    return x


@pytest.mark.parametrize("make_x,match", [
    (lambda x: x[:, :, :4, :4], r"example shape \(1, 4, 4\).*input_shape is \(1, 8, 8\)"),
    (_nan, "NaN or inf"),
    (lambda x: x * 255, r"outside the classifier's clip_values \(0, 1\)"),
    (lambda x: x[:0], "empty"),
    (lambda x: "not an array", "must be a numpy array|example shape"),
])
def test_bad_x(trainer, xy, make_x, match):
    x, y = xy
    with pytest.raises((ValueError, TypeError), match=match):
        trainer.fit(make_x(x), y, nb_epochs=1)


@pytest.mark.parametrize("make_y,match", [
    (lambda y: y + 10, r"must lie in \[0, 10\), got values in \[10, 19\]"),
    (lambda y: -y - 1, r"must lie in \[0, 10\)"),
    (lambda y: np.eye(10)[y] * 2, "Malformed one-hot"),
    (lambda y: np.eye(11)[y], "must have 10 columns"),
    (lambda y: y[:10], "10 labels for 64 examples"),
    (lambda y: y + 0.5, "must be integers"),
])
def test_bad_labels(trainer, xy, make_y, match):
    x, y = xy
    with pytest.raises(ValueError, match=match):
        trainer.fit(x, make_y(y), nb_epochs=1)


@pytest.mark.parametrize("kwargs,match", [
    (dict(eps=8), r"`eps`=8 exceeds the \(0, 1\) input range"),
    (dict(eps=0), r"`eps` must be a positive number, got 0"),
    (dict(eps=-0.1), "`eps` must be a positive number"),
    (dict(eps_step=0), "`eps_step` must be a positive number, got 0"),
    (dict(max_iter=0), "`max_iter` must be an integer >= 1, got 0"),
    (dict(max_iter=2.5), "`max_iter` must be an integer"),
    (dict(beta_schedule=((0, 1), (1.0, 1.5))), r"`beta_schedule` values must lie in \[0, 1\]"),
    (dict(beta_schedule="cosine"), "`beta_schedule` must be 'official'"),
    (dict(distribute_start=1.5), r"`distribute_start` as a fraction.*got 1.5"),
    (dict(distribute_start=0), "`distribute_start` in epochs must be >= 1, got 0"),
    (dict(distribute_every=-1), "`distribute_every` in epochs must be >= 1, got -1"),
    (dict(norm=1), "Unsupported `norm` 1"),
    (dict(ema_decay=1.5), r"`ema_decay` must lie in \[0, 1\] or be .auto., got 1.5"),
    (dict(learners=[LearnerSpec("robust")]), "at least 2 LearnerSpec, got 1"),
    (dict(learners=[LearnerSpec("a"), LearnerSpec("a", "natural")]), "names must be unique"),
    (dict(learners=[LearnerSpec("a", "fgsm"), LearnerSpec("b", "natural")]), "Unknown objective 'fgsm'"),
])
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GeneralistTrainer(make_classifier(), **{**FAST, **kwargs})


def test_bad_classifier_setup():
    with pytest.raises(ValueError, match="no `clip_values`"):
        GeneralistTrainer(make_classifier(clip_values=None), **FAST)


def test_runtime_beta_out_of_range(xy):
    trainer = GeneralistTrainer(make_classifier(), beta_schedule=lambda e, n: 2.0, **FAST)
    with pytest.raises(ValueError, match=r"β schedule returned 2.0"):
        trainer.fit(*xy, nb_epochs=1)


@pytest.mark.parametrize("kwargs,match", [(dict(batch_size=0), "`batch_size` must be an integer >= 1, got 0"),
                                          (dict(nb_epochs=0), "`nb_epochs` must be an integer >= 1, got 0"),
                                          (dict(unknown=1), r"unexpected keyword\(s\) \['unknown'\]")])
def test_bad_loop_arguments(trainer, xy, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        trainer.fit(*xy, **kwargs)
