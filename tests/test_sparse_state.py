"""Sparse training and the trainer's state: bit-identical resume with masks, exports that keep the
zeros, and FLOPs reports that agree with a hand count."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from art_generalist import GeneralistTrainer, SingleLearnerTrainer
from art_generalist.sparse import FlyingBird, FlyingBirdPlus, RobustBird
from art_generalist.state import load_exported
from art_generalist.state.files import safe_load
from tests.conftest import FAST, make_classifier, tiny_net


@pytest.fixture
def small(digits):
    return digits.x_train[:128], digits.y_train[:128]


def flat(obj, prefix=""):
    if isinstance(obj, dict):
        return {k: v for key, value in obj.items() for k, v in flat(value, f"{prefix}/{key}").items()}
    if isinstance(obj, (list, tuple)):
        return {k: v for i, value in enumerate(obj) for k, v in flat(value, f"{prefix}/{i}").items()}
    return {prefix: obj}


def assert_identical(a, b):
    fa, fb = flat(a), flat(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        if "seconds" in k:
            continue
        if isinstance(fa[k], torch.Tensor):
            assert fa[k].dtype == fb[k].dtype and torch.equal(fa[k], fb[k]), k
        else:
            assert fa[k] == fb[k], k


RUNS = {
    "fb-single": (SingleLearnerTrainer, lambda: FlyingBird(density=0.2, update_every=3), {}),
    "fb-generalist": (GeneralistTrainer, lambda: FlyingBird(density=0.2, update_every=3, growth="gradient"), {}),
    "fbp-single": (SingleLearnerTrainer, lambda: FlyingBirdPlus(density=0.2, update_every=1, dynamic_epoch=1,
                                                                epoch_range=1), {"val_max_iter": 2}),
    "rb-single": (SingleLearnerTrainer, lambda: RobustBird(density=0.2, window=2, max_search_epochs=2), {}),
}


@pytest.mark.parametrize("run", sorted(RUNS))
def test_resume_with_masks_is_bit_identical(small, tmp_path, run):
    cls, make, options = RUNS[run]
    x, y = small
    fit = dict(nb_epochs=4, batch_size=32, validation_data=(x[:32], y[:32]) if options else None)

    def trainer(seed):
        torch.manual_seed(seed)
        return cls(make_classifier(tiny_net(seed, bn=True)), sparsity=make(), **{**FAST, **options})

    full = trainer(0)
    full.fit(x, y, checkpoint_dir=tmp_path / "full", **fit)
    trainer(0).fit(x, y, checkpoint_dir=tmp_path / "half", stop_after=2, **fit)
    resumed = trainer(3)  # other weights, masks and RNG: all come from the checkpoint
    history = resumed.fit(x, y, checkpoint_dir=tmp_path / "half", resume=True, **fit)
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]  # the whole run, as a resumed fit returns it
    a, b = full.state_dict(), resumed.state_dict()
    for key in ("models", "plugins", "history", "progress", "rng"):
        assert_identical(a[key], b[key])
    state = safe_load(tmp_path / "half" / "checkpoint-epoch00002.pt")["plugins"]["sparsity"]  # weights-only load
    assert all(m.dtype == torch.bool for m in state["masks"].values()) and state["iteration"] == 8


@pytest.mark.parametrize("cls", [SingleLearnerTrainer, GeneralistTrainer])
def test_export_keeps_the_zeros_and_the_densities(small, tmp_path, cls):
    plugin = FlyingBird(density=0.3, update_every=2)
    trainer = cls(make_classifier(tiny_net(0)), sparsity=plugin, **FAST)
    trainer.fit(*small, nb_epochs=2, batch_size=32)
    path, meta_path = trainer.export(tmp_path / "model.safetensors")
    weights = load_file(str(path))
    model = load_exported(path, model=tiny_net(5)).model
    for name, mask in plugin.masks.items():
        assert torch.equal(weights[name][~mask], torch.zeros(int((~mask).sum())))
        assert torch.equal(model.get_parameter(name).detach(), weights[name])
    meta = json.loads(meta_path.read_text())["plugins"]["sparsity"]
    assert meta["method"] == "Flying Bird" and meta["settings"]["density"] == 0.3
    assert meta["layers"] == pytest.approx(plugin.masks.layer_densities())
    assert meta["density"] == pytest.approx(plugin.masks.density()) and meta["nnz"] == plugin.masks.nnz()


def two_layer() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


# Hand count, one 1x8x8 example: layers of 64x32 and 32x10 weights, each kept at density 0.5.
FWD = 2 * (64 * 32 + 32 * 10)                   # forward: 2 FLOPs per weight
IN_BWD = FWD                                     # attack backward: input gradients of both layers
BWD = 2 * (64 * 32 + 32 * 10) + 2 * 32 * 10      # training backward: weight gradients + second layer's input
PGD2 = 2 * (FWD + IN_BWD) + FWD + BWD            # PGD-2 adversarial training step
NATURAL = FWD + BWD


@pytest.mark.parametrize("cls", [SingleLearnerTrainer, GeneralistTrainer])
def test_report_agrees_with_a_hand_count_on_a_two_layer_model(small, cls):
    plugin = FlyingBird(density=0.5, init="uniform", update_every=10**6)
    trainer = cls(make_classifier(two_layer()), sparsity=plugin, **FAST)
    trainer.fit(*small, nb_epochs=2, batch_size=64)
    report = trainer.sparsity_report()
    assert report["density"] == 0.5 and report["method"] == "Flying Bird"
    assert report["layers"] == {"1.weight": {"density": 0.5, "weights": 2048, "forward_flops": 2 * 2048},
                                "3.weight": {"density": 0.5, "weights": 320, "forward_flops": 2 * 320}}
    assert report["inference_flops"] == {"per": "example", "dense": FWD, "sparse": FWD / 2}
    per_example = PGD2 + (NATURAL if cls is GeneralistTrainer else 0)  # Generalist adds its natural learner
    epochs = report["training_flops"]["per_epoch"]
    assert [(e["epoch"], e["dense"], e["sparse"]) for e in epochs] == [(1, 128 * per_example, 64 * per_example),
                                                                       (2, 128 * per_example, 64 * per_example)]
    assert report["training_flops"]["total_dense"] == 256 * per_example and report["training_flops"]["ratio"] == 0.5
    assert report["training_flops"]["stage1"] is None
    assert report["seconds"]["training"] == pytest.approx(sum(r["seconds"] for r in trainer.history))
    assert "FLOPs, not wall-clock time" in report["note"]
    assert json.loads(json.dumps(report)) == report  # plain values, ready for a benchmark's JSON


def test_trades_counts_its_second_pass_and_the_clean_logits(small):
    plugin = FlyingBird(density=0.5, init="uniform", update_every=10**6)
    trainer = SingleLearnerTrainer(make_classifier(two_layer()), objective="trades", sparsity=plugin, **FAST)
    trainer.fit(*small, nb_epochs=1, batch_size=64)
    trades = 2 * (FWD + IN_BWD) + FWD + 2 * (FWD + BWD)
    assert trainer.history[0]["sparsity"]["train_flops_dense"] == 128 * trades
