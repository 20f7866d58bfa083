"""The plug-in hooks that sparse training needs: ``begin_fit`` (budget, batches, validation) and
``after_epoch`` after validation; and the validation PGD loss that Flying Bird+ watches."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from art_generalist import GeneralistTrainer, Plugin, SingleLearnerTrainer
from art_generalist.core.attack import predict_labels
from art_generalist.train.validation import madry_attack, validate
from tests.conftest import FAST_VALIDATED as FAST
from tests.conftest import make_classifier, tiny_net


@pytest.fixture
def small(digits):
    return digits.x_train[:128], digits.y_train[:128]


class Recorder(Plugin):
    name = "recorder"

    def __init__(self):
        self.calls = []

    def begin_fit(self, trainer, nb_epochs, nb_batches, batches, validation):
        epoch = list(batches())
        self.calls.append(("begin_fit", nb_epochs, nb_batches, trainer.progress.epoch, len(epoch),
                           validation is not None))
        self.batch = epoch[0]

    def after_step(self, learner):
        if not self.calls or self.calls[-1][0] != "step":
            self.calls.append(("step",))

    def after_epoch(self, trainer, record):
        self.calls.append(("after_epoch", record["epoch"], "val_pgd_acc" in record, "val_pgd_loss" in record))


@pytest.mark.parametrize("cls", [GeneralistTrainer, SingleLearnerTrainer])
def test_begin_fit_once_per_fit_with_the_budget_batches_and_validation(small, cls, tmp_path):
    x, y = small
    plugin = Recorder()
    trainer = cls(make_classifier(tiny_net(0)), plugins=[plugin], **FAST)
    trainer.fit(x, y, validation_data=(x[:32], y[:32]), nb_epochs=2, batch_size=32, checkpoint_dir=tmp_path,
                stop_after=1)
    assert plugin.calls == [("begin_fit", 2, 4, 0, 4, True), ("step",), ("after_epoch", 1, True, True)]
    u, yb = plugin.batch
    assert u.shape == (32, 1, 8, 8) and 0 <= float(u.min()) and float(u.max()) <= 1 and yb.dtype == torch.long
    plugin.calls.clear()
    with pytest.raises(ValueError, match="data.batch_size: checkpoint 32, now 64"):  # another run's budget
        trainer.fit(x, y, nb_epochs=2, batch_size=64, checkpoint_dir=tmp_path, resume=True)
    assert plugin.calls == []  # refused before the plug-ins hear of it
    trainer.fit(x, y, nb_epochs=2, batch_size=32, checkpoint_dir=tmp_path, resume=True)  # no validation
    assert plugin.calls == [("begin_fit", 2, 4, 1, 4, False), ("step",), ("after_epoch", 2, False, False)]


def test_validation_pgd_loss_is_the_mean_cross_entropy_on_the_attacked_points(digits):
    torch.manual_seed(0)
    trainer = SingleLearnerTrainer(make_classifier(tiny_net(0)), **FAST)
    trainer.fit(digits.x_train[:256], digits.y_train[:256], nb_epochs=2, batch_size=64)
    u, y = trainer._to_device(digits.x_test[:96], digits.y_test[:96])
    space = trainer.global_space
    record = validate(space, u, y, trainer.norm, trainer.eps, 3)  # restores the RNG state afterwards
    ok = predict_labels(space, u) == y
    attack = madry_attack(space, trainer.norm, trainer.eps, 3)
    x_adv = attack(u[ok], y[ok])  # validate forks the RNG, so the same random start is drawn
    with torch.no_grad():
        space.eval()
        logits = space(x_adv)
    assert record["val_pgd_loss"] == pytest.approx(F.cross_entropy(logits, y[ok]).item(), rel=1e-5)
    assert record["val_pgd_acc"] == pytest.approx(float((logits.argmax(1) == y[ok]).sum()) / len(y))
    assert validate(space, u, y, trainer.norm, trainer.eps, 0)["val_pgd_loss"] is None
    never_right = (predict_labels(space, u) + 1) % 10
    assert math.isnan(validate(space, u, never_right, trainer.norm, trainer.eps, 2)["val_pgd_loss"])
