"""Three small training runs whose weights are pinned: a refactor must leave them bit for bit.

The pinned SHA-256 of each run's final weights (``tests/data/weight_hashes.json``) was recorded
by ``python -m tests.test_bit_identity --record`` on the code before the floor-plan refactor. On a
machine whose torch version or CPU capability differs from the recording's, kernels may round
differently: there the test compares the weights' norms to a relative 1e-5 instead.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch

RECORD = Path(__file__).with_name("data") / "weight_hashes.json"
FAST = dict(eps=0.1, eps_step=0.025, max_iter=2, verbose=False, val_max_iter=0)


def _runs():
    from art_generalist import GeneralistTrainer, SingleLearnerTrainer
    from art_generalist.data import load_dataset
    from art_generalist.sparse import FlyingBird
    from tests.conftest import make_classifier, tiny_net

    data = load_dataset("digits")
    x, y = data.x_train[:192], data.y_train[:192]

    def generalist():
        torch.manual_seed(1)
        return GeneralistTrainer(make_classifier(tiny_net(1, bn=True)), **FAST)

    def trades():
        torch.manual_seed(2)
        return SingleLearnerTrainer(make_classifier(tiny_net(2)), objective="trades", lr_schedule="official", **FAST)

    def flying_bird():
        torch.manual_seed(3)
        return GeneralistTrainer(make_classifier(tiny_net(3)), sparsity=FlyingBird(density=0.5, update_every=2),
                                 **FAST)

    for name, build in (("generalist", generalist), ("single_trades", trades), ("flying_bird", flying_bird)):
        torch.manual_seed(10)
        trainer = build()
        trainer.fit(x, y, nb_epochs=3, batch_size=64)
        yield name, trainer.get_classifier().model.state_dict()


def _summary(state: dict) -> dict:
    h = hashlib.sha256()
    norms = {}
    for key in sorted(state):
        t = state[key].detach().contiguous().cpu()
        h.update(key.encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        if t.is_floating_point():
            norms[key] = float(t.double().norm())
    return {"sha256": h.hexdigest(), "norms": norms}


def _machine() -> dict:
    return {"torch": torch.__version__, "cpu": torch.backends.cpu.get_cpu_capability()}


def _record() -> None:
    torch.set_num_threads(1)
    RECORD.parent.mkdir(exist_ok=True)
    RECORD.write_text(json.dumps({"machine": _machine(), "runs": {n: _summary(s) for n, s in _runs()}},
                                 indent=1, sort_keys=True) + "\n", encoding="utf-8")


def test_three_small_runs_give_the_pinned_weights():
    pinned = json.loads(RECORD.read_text(encoding="utf-8"))
    exact = pinned["machine"] == _machine()
    for name, state in _runs():
        now, then = _summary(state), pinned["runs"][name]
        if exact:
            assert now["sha256"] == then["sha256"], f"{name}: the weights differ from the pinned run"
        else:
            assert now["norms"].keys() == then["norms"].keys()
            for key, value in now["norms"].items():
                assert value == pytest.approx(then["norms"][key], rel=1e-5, abs=1e-7), f"{name}: {key}"


if __name__ == "__main__" and "--record" in sys.argv:
    _record()
