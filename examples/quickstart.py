"""Generalist on the embedded digits set, offline, in about a minute on a laptop CPU."""
import numpy as np
import torch
from art.estimators.classification import PyTorchClassifier
from torch import nn

from art_generalist import GeneralistTrainer
from art_generalist.data import load_dataset
from art_generalist.models import DigitsNet

torch.manual_seed(0)
data = load_dataset("digits")  # 1x8x8 images in [0, 1]; no download
x_train, y_train = data.x_train[:-200], data.y_train[:-200]
x_val, y_val = data.x_train[-200:], data.y_train[-200:]  # validation from the training split

model = DigitsNet()
classifier = PyTorchClassifier(model, loss=nn.CrossEntropyLoss(), input_shape=data.input_shape, nb_classes=10,
                               optimizer=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                               clip_values=(0.0, 1.0), preprocessing=(np.array(data.mean), np.array(data.std)))

trainer = GeneralistTrainer(classifier, eps=0.2, eps_step=0.05, max_iter=10)
history = trainer.fit(x_train, y_train, validation_data=(x_val, y_val), nb_epochs=12, batch_size=64)
robust_model = trainer.get_classifier()  # the global learner, an ART PyTorchClassifier

# The base learners equal G after the last distribution; their EMA teachers differ.
for name in ["global", "robust", "natural", "teacher:robust", "teacher:natural"]:
    torch.manual_seed(1)
    clean, pgd = trainer.accuracy(data.x_test, data.y_test, model=name, pgd_steps=20)
    print(f"{name:16s} clean {clean:.3f}  PGD-20 (eps {trainer.eps}) {pgd:.3f}")
