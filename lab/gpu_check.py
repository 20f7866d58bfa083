"""The prepared accelerator check: correctness of CUDA against the CPU, then the speeds a CPU cannot give.

1. One training step (natural objective, no random draws) of SmallCNN on the same weights and batch
   on the CPU and on the device: the largest weight difference (TF32 off). ``evaluate`` (clean and
   PGD-10) of the same model on both: clean agreement, PGD within two points.
2. Epoch time of GeneralistTrainer against ART's AdversarialTrainerMadryPGD on SmallCNN / Fashion-MNIST
   (fp32, then Generalist with bf16 autocast and channels_last), and of PreAct-ResNet-18 on
   Fashion-MNIST zero-padded to 32x32 (Generalist, bf16 + channels_last).
3. AutoAttack (version ``fast``) on the device, seconds per 100 points.

Everything lands in one JSON (``--out``); the run prints it too. On a lent GPU (see the device
tool), with the data carried into the tree (``cp ../shared/data/FashionMNIST/raw/*.gz
.device_data/FashionMNIST/raw/``, carry ``.device_data``):

    python lab/gpu_check.py --data-root .device_data --out $OUT/gpu_check.json

``--smoke`` runs every part on a few examples (CPU allowed), to check the script itself.
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
import torch
from record import run_record

from art_generalist import GeneralistTrainer, SingleLearnerTrainer, evaluate
from art_generalist.data import load_dataset
from art_generalist.estimators import build_classifier
from art_generalist.models import get_model
from art_generalist.state.files import atomic_write_json

FAST = dict(eps=0.1, eps_step=0.025, max_iter=10, verbose=False, val_max_iter=0)


def _classifier(data: Any, name: str, device: str, seed: int = 0, size: int = 28):
    torch.manual_seed(seed)
    model = get_model(name, data.input_shape[0], data.nb_classes, size)
    return build_classifier(model, data, lr=0.01, device=device)


def agreement(data: Any, device: str, n: int, model: str = "smallcnn") -> dict:
    """CPU against ``device`` on one step and on ``evaluate``."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    x, y = data.x_train[:n], data.y_train[:n]
    states = {}
    for dev in ("cpu", device):
        trainer = SingleLearnerTrainer(_classifier(data, model, dev, size=data.input_shape[-1]), objective="natural",
                                       channels_last=False,
                                       **FAST)
        trainer.fit(x, y, nb_epochs=1, batch_size=n, shuffle=False)
        states[dev] = {k: v.detach().cpu() for k, v in trainer.get_classifier().model.state_dict().items()}
    step_diff = max(float((states["cpu"][k].float() - states[device][k].float()).abs().max()) for k in states["cpu"])
    reports = {dev: evaluate(_classifier(data, model, dev, size=data.input_shape[-1]), data.x_test[:n],
                             data.y_test[:n], eps=0.1, attacks=("pgd",), pgd_steps=10, device=dev, checks=None)
               for dev in ("cpu", device)}
    clean = {dev: r.clean_acc for dev, r in reports.items()}
    pgd = {dev: r.attacks["pgd"]["acc"] for dev, r in reports.items()}
    return {"step_max_weight_diff": step_diff, "clean": clean, "pgd10": pgd,
            "ok": step_diff < 1e-4 and clean["cpu"] == clean[device] and abs(pgd["cpu"] - pgd[device]) <= 0.02}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def epoch_seconds(data: Any, device: str, n: int, model: str, size: int, method: str, **runtime: Any) -> float:
    x, y = data.x_train[:n], data.y_train[:n]
    if size != data.input_shape[-1]:
        pad = (size - data.input_shape[-1]) // 2
        x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    clf = _classifier(data, model, device, size=size)
    if size != data.input_shape[-1]:  # the classifier of the padded images
        from art.estimators.classification import PyTorchClassifier

        clf = PyTorchClassifier(clf.model, clf.loss, (data.input_shape[0], size, size), data.nb_classes,
                                optimizer=clf.optimizer, clip_values=(0.0, 1.0),
                                preprocessing=(np.array(data.mean), np.array(data.std)),
                                device_type="gpu" if device.startswith("cuda") else "cpu")
    if method == "art_madry":
        from art.defences.trainer import AdversarialTrainerMadryPGD

        trainer = AdversarialTrainerMadryPGD(clf, nb_epochs=1, eps=FAST["eps"], eps_step=FAST["eps_step"],
                                             max_iter=FAST["max_iter"], num_random_init=1)
        _sync(device)
        start = time.perf_counter()
        trainer.fit(x, y, nb_epochs=1, batch_size=128)
    else:
        trainer = GeneralistTrainer(clf, **FAST, **runtime)
        _sync(device)
        start = time.perf_counter()
        trainer.fit(x, y, nb_epochs=1, batch_size=128)
    _sync(device)
    return time.perf_counter() - start


def autoattack_seconds(data: Any, device: str, n: int, model: str = "smallcnn") -> dict:
    clf = _classifier(data, model, device, size=data.input_shape[-1])
    start = time.perf_counter()
    report = evaluate(clf, data.x_test[:n], data.y_test[:n], eps=0.1, attacks=("autoattack",), aa_version="fast",
                      device=device, checks=None)
    return {"points": n, "seconds_per_100": 100 * (time.perf_counter() - start) / n,
            "robust_acc_untrained": report.attacks["autoattack"]["acc"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--n-train", type=int, default=8192, help="examples per timed epoch")
    p.add_argument("--smoke", action="store_true", help="a few examples per part, to check the script")
    p.add_argument("--out", default=None, help="write the JSON here")
    args = p.parse_args()
    smoke = args.smoke
    data = (load_dataset("digits") if smoke else load_dataset("fashion_mnist", root=args.data_root))
    n = 64 if smoke else args.n_train
    out: dict[str, Any] = {"device": args.device, "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available()
                           else None, "record": run_record(), "n_train": n}
    small = "digits_net" if smoke else "smallcnn"
    out["agreement"] = agreement(data, args.device, 32 if smoke else 512, small)
    size = data.input_shape[-1]
    out["epoch_seconds"] = {
        "smallcnn_generalist_fp32": epoch_seconds(data, args.device, n, small, size, "generalist", channels_last=False),
        "smallcnn_generalist_bf16_channels_last": epoch_seconds(data, args.device, n, small, size, "generalist",
                                                                amp=True, channels_last=True),
        "smallcnn_art_madry_fp32": epoch_seconds(data, args.device, n, small, size, "art_madry"),
        "preact_resnet18_32px_generalist_bf16_channels_last": epoch_seconds(
            data, args.device, 32 if smoke else n, "preact_resnet18", 32 if not smoke else 16, "generalist", amp=True,
            channels_last=True),
    }
    out["autoattack"] = autoattack_seconds(data, args.device, 16 if smoke else 500, small)
    print(json.dumps(out, indent=1, default=str), flush=True)
    if args.out:
        atomic_write_json(args.out, out, indent=1, default=str)


if __name__ == "__main__":
    main()
