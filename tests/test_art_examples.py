"""ART's own example scripts, shrunk, with only the trainer line changed.

Ported from Trusted-AI/adversarial-robustness-toolbox: ``examples/adversarial_training_trades.py``,
``examples/adversarial_training_awp.py``, ``examples/adversarial_training_FBF.py`` and the
adversarial-training cell of ``notebooks/huggingface_notebook.ipynb``. The scripts' models,
classifiers, data generators, schedulers and evaluations are kept (a small CNN for ResNet-18,
random CIFAR-shaped data, one or two epochs); where the script builds ART's trainer, the package's
trainer is built instead. What the scripts print is asserted: the ``classifier`` object they
evaluate after ``fit`` is the trained one.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from art.attacks.evasion import ProjectedGradientDescent
from art.data_generators import PyTorchDataGenerator
from art.estimators.classification import PyTorchClassifier
from art.estimators.classification.hugging_face import HuggingFaceClassifierPyTorch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from art_generalist import GeneralistTrainer, SingleLearnerTrainer

TRAINERS = {"generalist": lambda clf, **kw: GeneralistTrainer(clf, **kw),
            "pgd": lambda clf, **kw: SingleLearnerTrainer(clf, objective="pgd", **kw),
            "trades": lambda clf, **kw: SingleLearnerTrainer(clf, objective="trades", **kw)}
N = 96


def _cnn(seed=0):
    """A small stand-in for the scripts' (PreAct)ResNet-18, with BatchNorm as theirs have."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(4),
                         nn.Flatten(), nn.Linear(8 * 8 * 8, 10))


def _cifar_like(n=N, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 3, 32, 32), dtype=np.float32)
    y = rng.integers(0, 10, n)
    return x, np.eye(10, dtype=np.float32)[y]  # load_cifar10 returns one-hot labels


def _datagen(x, y):
    loader = DataLoader(TensorDataset(torch.as_tensor(x), torch.as_tensor(y.argmax(1))), batch_size=32,
                        shuffle=True)
    return PyTorchDataGenerator(iterator=loader, size=len(x), batch_size=32)


def _weights(model):
    return [p.detach().clone() for p in model.state_dict().values() if p.is_floating_point()]


def _evaluate(classifier, x_test, y_test):
    """The scripts' evaluation: clean and PGD-20 accuracy of ``classifier`` (ART's own attack)."""
    clean = np.mean(np.argmax(classifier.predict(x_test), 1) == np.argmax(y_test, 1))
    attack = ProjectedGradientDescent(classifier, norm=np.inf, eps=8.0 / 255.0, eps_step=2.0 / 255.0, max_iter=20,
                                      targeted=False, num_random_init=1, batch_size=128, verbose=False)
    adv = np.mean(np.argmax(classifier.predict(attack.generate(x_test, y=y_test)), 1) == np.argmax(y_test, 1))
    return clean, adv


def _untrained_labels(classifier, model, before, x):
    """The labels ``classifier`` predicted with the initial weights ``before`` (the weights are put back)."""
    trained = _weights(model)
    floats = [v for v in model.state_dict().values() if v.is_floating_point()]
    with torch.no_grad():
        for v, b in zip(floats, before):
            v.copy_(b)
        labels = classifier.predict(x).argmax(1)
        for v, t in zip(floats, trained):
            v.copy_(t)
    return labels


def _evaluates_the_trained_function(classifier, model, before, x_test, y_test):
    """Random labels and 3 to 6 steps leave both accuracies of the scripts at chance (the trained
    model predicts one class), so check that the accuracy they print is the trained function's:
    it labels the test points otherwise than the initial weights did (measured: 32 of 32 points)."""
    untrained = _untrained_labels(classifier, model, before, x_test)
    clean, _ = _evaluate(classifier, x_test, y_test)  # what the scripts print
    labels = classifier.predict(x_test).argmax(1)
    assert np.mean(labels != untrained) >= 0.5
    assert clean == np.mean(labels == y_test.argmax(1))


def _check_trained(trainer, classifier, model, before, x_test, y_test):
    assert trainer.get_classifier() is classifier
    assert max(float((a - b).abs().max()) for a, b in zip(before, _weights(model))) > 1e-4
    np.testing.assert_allclose(classifier.predict(x_test), trainer.predict(x_test), rtol=1e-5, atol=1e-6)
    _evaluates_the_trained_function(classifier, model, before, x_test, y_test)


@pytest.mark.parametrize("method", sorted(TRAINERS))
def test_trades_example(method):
    (x_train, y_train), (x_test, y_test) = _cifar_like(), _cifar_like(32, seed=1)
    model = _cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
    lr_scheduler = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[1], gamma=0.1)
    classifier = PyTorchClassifier(model=model, clip_values=(0.0, 1.0), loss=nn.CrossEntropyLoss(), optimizer=opt,
                                   input_shape=(3, 32, 32), nb_classes=10)
    before = _weights(model)
    # ART: trainer = AdversarialTrainerTRADESPyTorch(classifier, attack, beta=6.0)
    trainer = TRAINERS[method](classifier, eps=8 / 255, eps_step=2 / 255, max_iter=2, verbose=False)
    trainer.fit_generator(_datagen(x_train, y_train), nb_epochs=2, scheduler=lr_scheduler)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)  # the scheduler stepped once per epoch
    _check_trained(trainer, classifier, model, before, x_test, y_test)


@pytest.mark.parametrize("method", ["generalist", "pgd"])
@pytest.mark.parametrize("script", ["awp", "fbf"])
def test_awp_and_fbf_examples_with_full_shape_preprocessing(method, script):
    (x_train, y_train), (x_test, y_test) = _cifar_like(), _cifar_like(32, seed=1)
    cifar_mu = np.ones((3, 32, 32))
    cifar_mu[0, :, :], cifar_mu[1, :, :], cifar_mu[2, :, :] = 0.4914, 0.4822, 0.4465
    cifar_std = np.ones((3, 32, 32))
    cifar_std[0, :, :], cifar_std[1, :, :], cifar_std[2, :, :] = 0.2471, 0.2435, 0.2616
    model = _cnn()
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1 if script == "awp" else 0.21, momentum=0.9, weight_decay=5e-4)
    classifier = PyTorchClassifier(model=model, clip_values=(0.0, 1.0), preprocessing=(cifar_mu, cifar_std),
                                   loss=nn.CrossEntropyLoss(), optimizer=opt, input_shape=(3, 32, 32), nb_classes=10)
    before = _weights(model)
    # ART: AdversarialTrainerAWPPyTorch(classifier, proxy_classifier, attack, ...) / AdversarialTrainerFBFPyTorch
    trainer = TRAINERS[method](classifier, eps=8 / 255, eps_step=2 / 255, max_iter=2, verbose=False)
    if script == "awp":
        lr_scheduler = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[1], gamma=0.1)
        trainer.fit_generator(_datagen(x_train, y_train), validation_data=(x_test, y_test), nb_epochs=2,
                              scheduler=lr_scheduler)
    else:
        trainer.fit_generator(_datagen(x_train, y_train), nb_epochs=1)
    _check_trained(trainer, classifier, model, before, x_test, y_test)


class _TinyViT(nn.Module):
    """A transformers-style image classifier (``pixel_values`` in, ``.logits`` out) at 224 px."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.patch = nn.Conv2d(3, 8, 28, stride=28)
        self.head = nn.Linear(8 * 8 * 8, 10)

    def forward(self, pixel_values):
        if pixel_values.shape[-1] != 224:
            raise RuntimeError(f"expected 224 px, got {pixel_values.shape[-1]}")  # the processor is needed
        logits = self.head(torch.relu(self.patch(pixel_values)).flatten(1))
        return type("ImageClassifierOutput", (), {"logits": logits})()


def _hf_model():
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(image_size=224, patch_size=56, num_channels=3, hidden_size=16,
                                    num_hidden_layers=1, num_attention_heads=2, intermediate_size=16, num_labels=10)
    torch.manual_seed(0)
    return transformers.ViTForImageClassification(config)


@pytest.mark.parametrize("model_kind", ["vit", "stand_in"])
@pytest.mark.parametrize("method", ["generalist", "pgd"])
def test_hugging_face_notebook(method, model_kind):
    (x_train, y_train), (x_test, y_test) = _cifar_like(32), _cifar_like(16, seed=1)
    model = _hf_model() if model_kind == "vit" else _TinyViT()
    upsampler = torch.nn.Upsample(scale_factor=7, mode="nearest")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    hf_model = HuggingFaceClassifierPyTorch(model, loss=torch.nn.CrossEntropyLoss(), input_shape=(3, 32, 32),
                                            nb_classes=10, optimizer=optimizer, clip_values=(0, 1),
                                            processor=upsampler)
    before = _weights(model)
    initial = [p.detach().clone() for p in model.parameters()]
    # ART: trainer = AdversarialTrainerMadryPGD(hf_model, nb_epochs=10, eps=8/255, eps_step=1/255, max_iter=10)
    trainer = TRAINERS[method](hf_model, eps=8 / 255, eps_step=1 / 255, max_iter=1, verbose=False)
    trainer.fit(x_train, y_train.argmax(1), nb_epochs=1, batch_size=16)
    # the notebook saves trainer._classifier.model's weights and evaluates them
    assert trainer._classifier is hf_model and trainer._classifier.model is model
    moved = max(float((a - b).abs().max()) for a, b in zip(before, _weights(model)))
    if method == "generalist":  # 2 iterations at the official schedule's 1-epoch lr (1e-3 x 0.01) per step
        assert moved > 1e-6
        for lrn in trainer.learners:  # each base learner trains its own weights (a dead copy gets no gradient)
            assert max(float((a - b).abs().max()) for a, b in zip(initial, lrn.model.parameters())) > 1e-5
    else:
        assert moved > 1e-4
    clean = np.mean(np.argmax(hf_model.predict(x_test), 1) == y_test.argmax(1))
    assert 0.0 <= clean <= 1.0
