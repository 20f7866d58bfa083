"""Weight averaging for the single-learner methods: the control Generalist's global learner calls for."""
from __future__ import annotations

import pytest
import torch

from art_generalist import Plugin, SingleLearnerTrainer
from tests.conftest import make_classifier, state_equal, tiny_net

BUDGET = dict(eps=0.1, eps_step=0.025, max_iter=2, verbose=False, val_max_iter=0)


class _Steps(Plugin):
    """The learner's weights and buffers after every optimizer step."""

    name = "steps"

    def __init__(self):
        self.states = []

    def after_step(self, learner):
        self.states.append({k: v.detach().clone() for k, v in learner.model.state_dict().items()})


def test_the_shipped_model_is_the_ema_of_the_learner_by_hand(digits):
    model = tiny_net(0, bn=True)
    classifier = make_classifier(model)
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    steps = _Steps()
    trainer = SingleLearnerTrainer(classifier, objective="pgd", ema_decay=0.6, ema_warmup=False, plugins=[steps],
                                   **BUDGET)
    trainer.fit(digits.x_train[:96], digits.y_train[:96], nb_epochs=2, batch_size=32)
    assert len(steps.states) == 6
    expected = {k: v.clone() for k, v in start.items()}
    for state in steps.states:
        for k, v in state.items():
            if v.is_floating_point():  # weights and BatchNorm running statistics alike
                expected[k] = 0.6 * expected[k] + 0.4 * v
            else:
                expected[k] = v.clone()  # num_batches_tracked: copied
    shipped = trainer.get_classifier().model.state_dict()
    assert trainer.get_classifier() is classifier and trainer.get_classifier().model is model  # ART's in-place
    for k, v in expected.items():
        torch.testing.assert_close(shipped[k], v, rtol=1e-5, atol=1e-6, msg=k)
    raw = trainer.learner_classifier.model.state_dict()
    assert state_equal(trainer.learner_classifier.model, trainer.learner.model)
    assert any(not torch.equal(raw[k], shipped[k]) for k in raw if raw[k].is_floating_point())  # not the same model
    assert "running_mean" in "".join(k for k in shipped) and not torch.equal(shipped["1.running_mean"],
                                                                             start["1.running_mean"])


def test_without_ema_decay_the_learner_is_the_shipped_model(digits):
    trainer = SingleLearnerTrainer(make_classifier(), **BUDGET)
    assert trainer.learner_classifier is trainer.get_classifier()
    assert set(trainer.models()) == {"global"}
    assert "ema_decay" not in trainer.settings()  # earlier checkpoints keep comparing equal


def test_auto_decay_is_budget_relative_as_generalists(digits):
    from art_generalist.core.schedules import budget_relative_ema

    trainer = SingleLearnerTrainer(make_classifier(), ema_decay="auto", **BUDGET)
    trainer.fit(digits.x_train[:320], digits.y_train[:320], nb_epochs=2, batch_size=32)
    assert (trainer.average.decay, trainer.average.warmup_k) == budget_relative_ema(20)
    assert trainer.settings()["ema_decay"] == "auto" and set(trainer.models()) == {"global", "learner"}


@pytest.mark.parametrize("objective", ["pgd", "trades"])
def test_resume_with_weight_averaging_is_bit_exact(digits, tmp_path, objective):
    x, y = digits.x_train[:96], digits.y_train[:96]

    def build():
        return SingleLearnerTrainer(make_classifier(tiny_net(0, bn=True)), objective=objective, ema_decay=0.7,
                                    **BUDGET)

    torch.manual_seed(5)
    full = build()
    full.fit(x, y, nb_epochs=3, batch_size=32)
    torch.manual_seed(5)
    build().fit(x, y, nb_epochs=3, batch_size=32, checkpoint_dir=tmp_path, stop_after=1)
    torch.manual_seed(123)  # the checkpoint's RNG state must take over
    resumed = build()
    resumed.fit(x, y, nb_epochs=3, batch_size=32, checkpoint_dir=tmp_path, resume=True)
    assert state_equal(full.get_classifier().model, resumed.get_classifier().model)
    assert state_equal(full.learner.model, resumed.learner.model)
    assert full.average.num_updates == resumed.average.num_updates == 9


def test_an_averaged_run_does_not_resume_a_plain_one(digits, tmp_path):
    x, y = digits.x_train[:64], digits.y_train[:64]
    SingleLearnerTrainer(make_classifier(), **BUDGET).fit(x, y, nb_epochs=2, batch_size=32, checkpoint_dir=tmp_path,
                                                          stop_after=1)
    with pytest.raises(ValueError, match="ema_decay"):
        SingleLearnerTrainer(make_classifier(), ema_decay=0.9, **BUDGET).fit(
            x, y, nb_epochs=2, batch_size=32, checkpoint_dir=tmp_path, resume=True)


def test_bad_ema_decay_is_refused():
    with pytest.raises(ValueError, match="ema_decay"):
        SingleLearnerTrainer(make_classifier(), ema_decay=1.5, **BUDGET)


def test_the_benchmark_runs_the_averaged_controls_with_generalists_averaging(tmp_path, monkeypatch):
    from art_generalist.benchmark.run import BenchmarkConfig, run_benchmark
    from art_generalist.methods import single

    built = []
    real_init = single.SingleLearnerTrainer.__init__

    def spy(self, *args, **kwargs):
        built.append(kwargs.get("ema_decay"))
        real_init(self, *args, **kwargs)
    monkeypatch.setattr(single.SingleLearnerTrainer, "__init__", spy)
    cfg = BenchmarkConfig(epochs=1, n_train=128, n_val=32, n_eval=16, max_iter=2, aa_version="apgd-ce", pgd_steps=2,
                          methods=("pgd_ema", "trades_ema@3"), out=str(tmp_path), verbose=False,
                          generalist={"ema_decay": 0.9})
    results = run_benchmark(cfg)
    assert [r["method"] for r in results["rows"]] == ["pgd_ema", "trades_ema@3"]
    assert built == [0.9, 0.9]  # the decay Generalist was given, for a fair control
