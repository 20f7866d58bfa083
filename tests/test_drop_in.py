"""Drop-in means drop-in: the package's trainers treat an ART estimator as ART's own trainers do.

One test (or a parametrised group) per point of the issue: the classifier passed in is trained
in place, Hugging Face classifiers train, every preprocessing shape ART accepts is read as ART
reads it, optimizer groups and postprocessing survive, schedules follow the optimizer, and
``fit`` takes ART's positional order and keywords.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from art.defences.postprocessor import ReverseSigmoid
from art.estimators.classification import PyTorchClassifier
from art.estimators.classification.hugging_face import HuggingFaceClassifierPyTorch
from torch import nn

from art_generalist import GeneralistTrainer, SingleLearnerTrainer
from tests.conftest import FAST_WIDE_STEPS as BUDGET

TRAINERS = [SingleLearnerTrainer, GeneralistTrainer]


def _data(shape=(1, 8, 8), n=32, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, *shape), dtype=np.float32), rng.integers(0, classes, n)


def _clf(model, shape=(1, 8, 8), classes=4, opt=None, **kw):
    opt = opt if opt is not None else torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return PyTorchClassifier(model, loss=nn.CrossEntropyLoss(), optimizer=opt, input_shape=shape,
                             nb_classes=classes, clip_values=kw.pop("clip_values", (0.0, 1.0)), **kw)


def _linear(features=64, classes=4, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(features, classes))


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _moved(before, model):
    return max(float((before[k] - v).abs().max()) for k, v in model.state_dict().items() if v.is_floating_point())


# -- 1. the classifier passed in is the one trained -------------------------------------------------
@pytest.mark.parametrize("cls", TRAINERS)
def test_the_users_classifier_is_trained_in_place(cls):
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    clf = _clf(model, shape=(1, 28, 28), classes=10)
    x, y = _data((1, 28, 28), classes=10)
    before = _weights(model)
    trainer = cls(clf, **BUDGET)
    trainer.fit(x, y, nb_epochs=1)
    assert trainer.get_classifier() is clf and clf.model is model
    assert _moved(before, model) > 1e-4
    np.testing.assert_allclose(clf.predict(x), trainer.predict(x), rtol=1e-6)


@pytest.mark.parametrize("cls", TRAINERS)
def test_copy_classifier_leaves_the_users_classifier_untouched(cls):
    model = _linear()
    clf = _clf(model)
    before = _weights(model)
    trainer = cls(clf, copy_classifier=True, **BUDGET)
    trainer.fit(*_data(), nb_epochs=1)
    assert trainer.get_classifier() is not clf and _moved(before, model) == 0
    assert _moved(before, trainer.get_classifier().model) > 1e-4


def test_generalist_in_place_model_is_the_global_learner():
    clf = _clf(_linear())
    trainer = GeneralistTrainer(clf, **BUDGET)
    trainer.fit(*_data(), nb_epochs=2)
    assert trainer.global_space.model is clf.model
    assert all(lrn.model is not clf.model for lrn in trainer.learners)


# -- 2. Hugging Face classifiers ------------------------------------------------------------------------
class _Output:
    def __init__(self, logits):
        self.logits = logits


class _HFLike(nn.Module):
    """A model that returns an object with ``.logits``, as transformers' image classifiers do."""

    def __init__(self, side=16):
        super().__init__()
        self.side = side
        self.fc = nn.Linear(3 * side * side, 4)

    def forward(self, pixel_values):
        assert pixel_values.shape[-1] == self.side, "the processor was not applied"
        return _Output(self.fc(pixel_values.flatten(1)))


@pytest.mark.parametrize("cls", TRAINERS)
def test_hugging_face_classifier_with_processor_trains(cls):
    torch.manual_seed(0)
    model = _HFLike()
    clf = HuggingFaceClassifierPyTorch(model, loss=nn.CrossEntropyLoss(), input_shape=(3, 8, 8), nb_classes=4,
                                       optimizer=torch.optim.Adam(model.parameters(), lr=1e-2), clip_values=(0, 1),
                                       processor=nn.Upsample(scale_factor=2, mode="nearest"))
    x, y = _data((3, 8, 8))
    before = _weights(model)
    trainer = cls(clf, **BUDGET)
    trainer.fit(x, y, nb_epochs=2)
    assert _moved(before, model) > 1e-3  # ART's own trainer moves it by ~1e-3 here; a dead copy by ~0
    if cls is GeneralistTrainer:
        for lrn in trainer.learners:  # each base learner's forward is its own
            assert lrn.model.forward.__wrapped__.__self__ is lrn.model
    np.testing.assert_allclose(clf.predict(x), trainer.predict(x), rtol=1e-6)


def test_instance_forward_that_is_not_arts_is_refused():
    model = _linear()
    model.forward = lambda x: x  # a monkey-patch the trainer cannot copy
    with pytest.raises(ValueError, match="forward"):
        GeneralistTrainer(_clf(model), **BUDGET)


# -- 3-5. preprocessing and clip shapes ------------------------------------------------------------
class _NHWC(nn.Module):
    def __init__(self, side=3, classes=4):
        super().__init__()
        self.fc = nn.Linear(side * side * 3, classes)

    def forward(self, x):  # (N, H, W, C)
        return self.fc(x.flatten(1))


MEAN = np.array([0.5, 0.4, 0.3], np.float32)
STD = np.array([0.2, 0.25, 0.3], np.float32)


@pytest.mark.parametrize("case", ["full_chw", "channels_last_rgb", "tabular_per_feature"])
@pytest.mark.parametrize("cls", TRAINERS)
def test_preprocessing_shapes_art_accepts_train_as_art_computes(cls, case):
    torch.manual_seed(0)
    if case == "full_chw":  # as in ART's AWP and FBF examples
        shape, model = (3, 4, 4), _linear(48)
        prep = (np.broadcast_to(MEAN[:, None, None], shape).copy(), np.broadcast_to(STD[:, None, None], shape).copy())
        kw = {}
    elif case == "channels_last_rgb":
        shape, model, prep, kw = (4, 4, 3), _NHWC(4), (MEAN, STD), {"channels_first": False}
    else:
        shape, model = (6,), nn.Sequential(nn.Linear(6, 4))
        prep, kw = (np.linspace(0.1, 0.6, 6, dtype=np.float32), np.linspace(0.2, 0.7, 6, dtype=np.float32)), {}
    clf = _clf(model, shape=shape, preprocessing=prep, **kw)
    x, y = _data(shape)
    trainer = cls(clf, **BUDGET)  # refuses at construction if its logits differ from ART's
    trainer.fit(x, y, nb_epochs=1)
    u = torch.as_tensor(x)
    np.testing.assert_allclose(trainer.global_space(u).detach().numpy(), clf.predict(x), rtol=1e-4, atol=1e-5)


def test_channels_first_mean_along_the_width_is_refused():
    # width 3 == channels 3: ART's StandardisationMeanStd would normalise along the width
    clf = _clf(_linear(27), shape=(3, 3, 3), preprocessing=(MEAN, STD))
    with pytest.raises(ValueError, match=r"\(3, 1, 1\)"):
        SingleLearnerTrainer(clf, **BUDGET)
    ok = _clf(_linear(27), shape=(3, 3, 3), preprocessing=(MEAN.reshape(3, 1, 1), STD.reshape(3, 1, 1)))
    SingleLearnerTrainer(ok, **BUDGET).fit(*_data((3, 3, 3)), nb_epochs=1)


def test_channels_last_side_equal_to_channels_uses_the_last_axis():
    clf = _clf(_NHWC(3), shape=(3, 3, 3), preprocessing=(MEAN, STD), channels_first=False)
    trainer = SingleLearnerTrainer(clf, **BUDGET)
    x, _ = _data((3, 3, 3))
    np.testing.assert_allclose(trainer.global_space(torch.as_tensor(x)).detach().numpy(), clf.predict(x),
                               rtol=1e-4, atol=1e-5)


def test_per_feature_clip_values():
    lo, hi = np.zeros(6, np.float32), np.ones(6, np.float32)
    clf = _clf(nn.Sequential(nn.Linear(6, 4)), shape=(6,), clip_values=(lo, hi))
    trainer = SingleLearnerTrainer(clf, **BUDGET)
    assert trainer.clip_values == (0.0, 1.0)
    trainer.fit(*_data((6,)), nb_epochs=1)
    hi[2] = 5.0  # a feature with another range: read as (lo[0], lo[1]) before; refused now
    clf = _clf(nn.Sequential(nn.Linear(6, 4)), shape=(6,), clip_values=(lo, hi))
    with pytest.raises(ValueError, match="Per-feature `clip_values`"):
        SingleLearnerTrainer(clf, **BUDGET)


# -- 6. optimizer parameter groups ---------------------------------------------------------------
@pytest.mark.parametrize("copy_classifier", [False, True])
@pytest.mark.parametrize("cls", TRAINERS)
def test_optimizer_parameter_groups_keep_their_hyper_parameters(cls, copy_classifier):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = torch.optim.SGD([{"params": model[1].parameters()},
                           {"params": model[3].parameters(), "lr": 0.1, "weight_decay": 0.0}],
                          lr=0.001, momentum=0.9, weight_decay=5e-4)
    trainer = cls(_clf(model, opt=opt), copy_classifier=copy_classifier, **BUDGET)
    history = trainer.fit(*_data(), nb_epochs=1)
    optimizers = [lrn.optimizer for lrn in trainer._learners()]
    for o in optimizers:
        assert [(g["weight_decay"], len(g["params"])) for g in o.param_groups] == [(5e-4, 2), (0.0, 2)]
        ratio = o.param_groups[1]["lr"] / o.param_groups[0]["lr"]
        assert ratio == pytest.approx(100.0)
    if cls is SingleLearnerTrainer:
        assert [g["lr"] for g in optimizers[0].param_groups] == [0.001, 0.1]  # no hidden schedule
        assert next(iter(history[0]["learners"].values()))["lr"] == 0.001


# -- 7. schedules ------------------------------------------------------------------------------------
def test_single_learner_follows_the_optimizers_lr_by_default():
    clf = _clf(_linear())
    history = SingleLearnerTrainer(clf, **BUDGET).fit(*_data(), nb_epochs=1)
    assert next(iter(history[0]["learners"].values()))["lr"] == 0.1 == clf.optimizer.param_groups[0]["lr"]


@pytest.mark.parametrize("cls", TRAINERS)
def test_fit_scheduler_is_stepped_once_per_epoch(cls):
    clf = _clf(_linear())
    sched = torch.optim.lr_scheduler.StepLR(clf.optimizer, step_size=1, gamma=0.5)
    history = cls(clf, **BUDGET).fit(*_data(), nb_epochs=3, batch_size=8, scheduler=sched)
    for record, lr in zip(history, [0.1, 0.05, 0.025]):
        assert all(v["lr"] == pytest.approx(lr) for v in record["learners"].values())
    assert clf.optimizer.param_groups[0]["lr"] == pytest.approx(0.0125)


def test_scheduler_of_another_optimizer_is_refused():
    clf = _clf(_linear())
    other = torch.optim.SGD(_linear().parameters(), lr=0.1)
    with pytest.raises(ValueError, match="scheduler"):
        SingleLearnerTrainer(clf, **BUDGET).fit(*_data(), nb_epochs=1,
                                                scheduler=torch.optim.lr_scheduler.StepLR(other, 1))


def test_scheduler_run_resumes_exactly(tmp_path):
    def run(stop_after=None, resume=False):
        clf = _clf(_linear())
        sched = torch.optim.lr_scheduler.MultiStepLR(clf.optimizer, milestones=[1, 2], gamma=0.1)
        torch.manual_seed(0)
        trainer = SingleLearnerTrainer(clf, **BUDGET)
        trainer.fit(*_data(), nb_epochs=3, scheduler=sched, checkpoint_dir=tmp_path, resume=resume,
                    stop_after=stop_after)
        return clf, sched

    full, _ = run()
    for p in tmp_path.iterdir():
        p.unlink()
    run(stop_after=1)
    resumed, sched = run(resume=True)
    assert sched.last_epoch == 3
    assert all(torch.equal(a, b) for a, b in zip(full.model.state_dict().values(),
                                                 resumed.model.state_dict().values()))


# -- 8. postprocessing defences --------------------------------------------------------------------
@pytest.mark.parametrize("copy_classifier", [False, True])
def test_postprocessing_defences_stay_on_the_shipped_classifier(copy_classifier):
    clf = _clf(_linear(), postprocessing_defences=[ReverseSigmoid(beta=1.0, gamma=0.1)])
    x, y = _data()
    trainer = GeneralistTrainer(clf, copy_classifier=copy_classifier, **BUDGET)
    trainer.fit(x, y, nb_epochs=1)
    shipped = trainer.get_classifier()
    assert [type(d) for d in shipped.postprocessing_defences] == [ReverseSigmoid]
    raw = torch.softmax(trainer.global_space(torch.as_tensor(x)), 1).detach().numpy()
    assert not np.allclose(shipped.predict(x), raw, atol=1e-3)  # the defence acts on the predictions


# -- 9. ART's fit signature ---------------------------------------------------------------------------
@pytest.mark.parametrize("cls", TRAINERS)
def test_fit_positional_order_is_arts(cls):
    x, y = _data(n=24)
    history = cls(_clf(_linear()), **BUDGET).fit(x, y, None, 8, 2)  # validation_data, batch_size, nb_epochs
    assert len(history) == 2 and history[0]["steps"] == 3


def test_art_keywords_are_accepted_and_unknown_ones_refused():
    trainer = SingleLearnerTrainer(_clf(_linear()), **BUDGET)
    x, y = _data()
    trainer.fit(x, y, nb_epochs=1, batch_size=10, verbose=False, drop_last=True)
    with pytest.warns(UserWarning, match="training_mode=False is ignored"):
        trainer.fit(x, y, nb_epochs=1, training_mode=False)
    with pytest.raises(TypeError, match="unexpected keyword.*nb_epoch\\b"):
        trainer.fit(x, y, nb_epoch=1)


def test_bare_module_is_refused_with_the_wrap():
    with pytest.raises(TypeError, match="PyTorchClassifier\\(model"):
        SingleLearnerTrainer(_linear(), **BUDGET)


def test_evaluate_reads_channels_last_and_processor_classifiers_as_art_does():
    from art_generalist.evaluation import evaluate

    clf = _clf(_NHWC(3), shape=(3, 3, 3), preprocessing=(MEAN, STD), channels_first=False)
    x, y = _data((3, 3, 3), n=16)
    report = evaluate(clf, x, y, eps=0.05, attacks=("pgd",), pgd_steps=2, progress=False)
    assert report.clean_acc == pytest.approx(np.mean(clf.predict(x).argmax(1) == y))
    with pytest.raises(ValueError, match=r"\(3, 1, 1\)"):  # ART would normalise along the width
        evaluate(_clf(_linear(27), shape=(3, 3, 3), preprocessing=(MEAN, STD)), x.transpose(0, 3, 1, 2), y,
                 eps=0.05, attacks=("pgd",), pgd_steps=2, progress=False)


@pytest.mark.parametrize("cls", TRAINERS)
def test_a_classifier_without_an_optimizer_is_refused_alike_with_the_fix(cls):
    clf = _clf(_linear())
    clf._optimizer = None
    with pytest.raises(ValueError, match=r"no optimizer.*optimizer=torch\.optim\.SGD\(model\.parameters\(\)"):
        cls(clf, **BUDGET)
