"""Generalist on the embedded digits set, next to single-learner PGD-AT, with and without
Generalist's weight averaging, at the same budget.

Offline, about a minute on a laptop CPU. Both trainers start from the same weights, see the same
data for the same epochs with the same optimizer and lr schedule, and are scored on the same test
points (clean and PGD-20 accuracy; for a full evaluation use ``art_generalist.evaluate``).
"""
import numpy as np
import torch
from art.estimators.classification import PyTorchClassifier
from torch import nn

from art_generalist import GeneralistTrainer, SingleLearnerTrainer
from art_generalist.data import load_dataset
from art_generalist.models import DigitsNet

data = load_dataset("digits")  # 1x8x8 images in [0, 1]; no download
x_train, y_train = data.x_train[:-200], data.y_train[:-200]
x_val, y_val = data.x_train[-200:], data.y_train[-200:]  # validation from the training split


def classifier() -> PyTorchClassifier:
    torch.manual_seed(0)  # the same initial weights for both trainers
    model = DigitsNet()
    return PyTorchClassifier(model, loss=nn.CrossEntropyLoss(), input_shape=data.input_shape, nb_classes=10,
                             optimizer=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                             clip_values=(0.0, 1.0), preprocessing=(np.array(data.mean), np.array(data.std)))


budget = dict(eps=0.2, eps_step=0.05, max_iter=10)
trainers = {"Generalist (global learner)": GeneralistTrainer(classifier(), **budget),
            "PGD-AT (single learner)": SingleLearnerTrainer(classifier(), objective="pgd", lr_schedule="official",
                                                            **budget),
            "PGD-AT + EMA (the control)": SingleLearnerTrainer(classifier(), objective="pgd", lr_schedule="official",
                                                               ema_decay="auto", **budget)}
for trainer in trainers.values():
    torch.manual_seed(0)
    trainer.fit(x_train, y_train, validation_data=(x_val, y_val), nb_epochs=12, batch_size=64)

robust_model = trainers["Generalist (global learner)"].get_classifier()  # an ART PyTorchClassifier
print(f"digits test set ({len(data.y_test)} points), eps {budget['eps']}, 12 epochs each:")
scores = {}
for name, trainer in trainers.items():
    torch.manual_seed(1)
    scores[name] = clean, pgd = trainer.accuracy(data.x_test, data.y_test, pgd_steps=20)
    print(f"  {name:28s} clean {clean:.3f}  PGD-20 {pgd:.3f}")
generalist = trainers["Generalist (global learner)"]
for name in ("teacher:robust", "teacher:natural"):  # the EMA teachers that G mixes
    torch.manual_seed(1)
    clean, pgd = generalist.accuracy(data.x_test, data.y_test, model=name, pgd_steps=20)
    print(f"  Generalist {name:17s} clean {clean:.3f}  PGD-20 {pgd:.3f}")
for metric, k in (("clean", 0), ("PGD-20", 1)):
    best = max(scores, key=lambda n: scores[n][k])
    ties = [n for n in scores if abs(scores[n][k] - scores[best][k]) < 1 / len(data.y_test)]
    print(f"  best {metric}: {', '.join(ties)} ({scores[best][k]:.3f}); on {len(data.y_test)} points a difference "
          f"under about 3 points is within noise (paired tests: lab/paired.py)")
