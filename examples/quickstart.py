"""Generalist on the embedded digits set, next to single-learner PGD-AT, with and without
Generalist's weight averaging, at the same budget.

Offline, about a minute on a laptop CPU. All three trainers start from the same weights, see the same
data for the same epochs with the same optimizer and lr schedule, and are scored on the same test
points (clean and PGD-20 accuracy, paired: the same points for every model; AutoAttack is one
``attacks=`` entry away).
"""
import numpy as np
import torch
from art.estimators.classification import PyTorchClassifier
from torch import nn

from art_generalist import GeneralistTrainer, SingleLearnerTrainer, evaluate
from art_generalist.benchmark.paired import compare_reports
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
epochs = 12
trainers = {"Generalist (global learner)": GeneralistTrainer(classifier(), **budget),
            "PGD-AT (single learner)": SingleLearnerTrainer(classifier(), objective="pgd", lr_schedule="official",
                                                            **budget),
            "PGD-AT + EMA (the control)": SingleLearnerTrainer(classifier(), objective="pgd", lr_schedule="official",
                                                               ema_decay="auto", **budget)}
for trainer in trainers.values():
    torch.manual_seed(0)
    trainer.fit(x_train, y_train, validation_data=(x_val, y_val), nb_epochs=epochs, batch_size=64)

robust_model = trainers["Generalist (global learner)"].get_classifier()  # an ART PyTorchClassifier
print(f"Trained on digits ({len(y_train)} images; 8x8, embedded), each for {epochs} epochs of batch 64, "
      f"against L-inf PGD-{budget['max_iter']} at eps {budget['eps']}, from the same initial weights.")
print(f"Scored on the {len(data.y_test)} test points: clean accuracy and PGD-20 accuracy (step 2.5*eps/20).")
reports = {name: evaluate(trainer.get_classifier(), data.x_test, data.y_test, eps=budget["eps"], attacks=("pgd",),
                          pgd_steps=20, checks=None, seed=1).to_dict()
           for name, trainer in trainers.items()}
for name, r in reports.items():
    print(f"  {name:28s} clean {100 * r['clean_acc']:5.1f}%  PGD-20 {100 * r['robust_acc']:5.1f}%")
reference = "Generalist (global learner)"
for name in reports:
    if name != reference:
        c = compare_reports(reports[reference], reports[name])
        print(f"  Generalist - {name}: clean {c['clean']['diff_points']:+.1f} points (McNemar p = "
              f"{c['clean']['p_value']:.2f}), PGD-20 {c['robust']['diff_points']:+.1f} points "
              f"(p = {c['robust']['p_value']:.2f})")
for metric, kind in (("clean", "clean_acc"), ("PGD-20", "robust_acc")):
    best = max(reports, key=lambda n: reports[n][kind])
    tied = [n for n in reports if n != best
            and compare_reports(reports[best], reports[n])["clean" if kind == "clean_acc" else "robust"]["p_value"]
            >= 0.05]
    print(f"Best on {metric}: {best}" + (f", not told apart (p >= 0.05) from {', '.join(tied)}" if tied else "")
          + ".")
