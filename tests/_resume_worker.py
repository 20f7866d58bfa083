"""Subprocess worker for the resume tests: train Generalist on digits with checkpoints.

    python tests/_resume_worker.py CKPT_DIR OUT.pt [--stop-after N] [--resume] [--slow]
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from art_generalist import GeneralistTrainer  # noqa: E402
from art_generalist.data import load_dataset  # noqa: E402
from tests.conftest import make_classifier, tiny_net  # noqa: E402

EPOCHS = 4


def _slow(u: torch.Tensor) -> torch.Tensor:
    time.sleep(0.05)
    return u


def main() -> None:
    ckpt_dir, out = sys.argv[1], sys.argv[2]
    stop_after = int(sys.argv[sys.argv.index("--stop-after") + 1]) if "--stop-after" in sys.argv else None
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(0)
    data = load_dataset("digits")
    trainer = GeneralistTrainer(make_classifier(tiny_net(0, bn=True)), eps=0.1, eps_step=0.025, max_iter=3,
                                verbose=False, val_max_iter=3, augment=_slow if "--slow" in sys.argv else None)
    x, y = data.x_train[:384], data.y_train[:384]
    trained = []  # epochs trained in this process
    train_epoch = trainer._train_epoch
    trainer._train_epoch = lambda epoch, *a: (trained.append(epoch), train_epoch(epoch, *a))[1]
    history = trainer.fit(x, y, validation_data=(data.x_test[:64], data.y_test[:64]), nb_epochs=EPOCHS, batch_size=64,
                checkpoint_dir=ckpt_dir, checkpoint_every=1, keep_last=2, resume="--resume" in sys.argv,
                stop_after=stop_after)
    torch.save({"models": trainer.state_dict()["models"], "epochs_run": trained,
                "returned": [r["epoch"] for r in history],
                "history_len": len(trainer.history)}, out)


if __name__ == "__main__":
    main()
