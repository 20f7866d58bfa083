"""Generalist against plain PGD-AT with the same model, data, epochs, optimizer and PGD budget.

Both are trained on the same training subset; a validation split (taken from the training
set, never the test set) is monitored; clean and PGD-20 accuracy (step 2.5·eps/20, random
start, attack run on correctly classified points) are reported on the test set.

    python examples/generalist_vs_pgd_at.py --dataset fashion_mnist --eps 0.1 --epochs 8 --n-train 10000
"""
from __future__ import annotations

import argparse
import time

import torch
from art.estimators.classification import PyTorchClassifier

from art_generalist import GeneralistTrainer, SingleLearnerTrainer
from art_generalist.core.attack import madry_step
from art_generalist.data import load_dataset
from art_generalist.estimators import build_classifier
from art_generalist.models import get_model
from art_generalist.state.files import atomic_write_json


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--model", default="smallcnn")
    p.add_argument("--data-root", default=None)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--n-train", type=int, default=10000)
    p.add_argument("--n-val", type=int, default=1000)
    p.add_argument("--n-test", type=int, default=2000)
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--eps-step", type=float, default=None, help="default 2.5*eps/max_iter")
    p.add_argument("--max-iter", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    eps_step = madry_step(args.eps, args.max_iter) if args.eps_step is None else args.eps_step
    data = load_dataset(args.dataset, root=args.data_root, n_train=args.n_train + args.n_val,
                        n_test=args.n_test, seed=args.seed)
    x_tr, y_tr = data.x_train[args.n_val:], data.y_train[args.n_val:]
    x_val, y_val = data.x_train[:args.n_val], data.y_train[:args.n_val]

    def classifier() -> PyTorchClassifier:
        torch.manual_seed(args.seed)
        model = get_model(args.model, data.input_shape[0], data.nb_classes, data.input_shape[-1])
        return build_classifier(model, data, lr=args.lr)

    budget = dict(eps=args.eps, eps_step=eps_step, max_iter=args.max_iter)
    trainers = {"generalist": GeneralistTrainer(classifier(), **budget),
                "pgd_at": SingleLearnerTrainer(classifier(), objective="pgd", lr_schedule="official", **budget)}
    results = {}
    for name, trainer in trainers.items():
        torch.manual_seed(args.seed)
        start = time.perf_counter()
        trainer.fit(x_tr, y_tr, validation_data=(x_val, y_val), nb_epochs=args.epochs, batch_size=args.batch_size)
        seconds = time.perf_counter() - start
        models = ["global"] + ([lrn.name for lrn in trainer.learners] if name == "generalist" else [])
        for model in models:
            torch.manual_seed(args.seed + 1)
            clean, pgd = trainer.accuracy(data.x_test, data.y_test, model=model, pgd_steps=20)
            key = name if model == "global" else f"{name}:{model}"
            results[key] = {"clean": clean, "pgd20": pgd, "train_seconds": seconds}
            print(f"{key:22s} clean {clean:.4f}  PGD-20 {pgd:.4f}  train {seconds:.0f}s", flush=True)
    if args.out:  # atomically: a kill or a full disk leaves no half-written file
        atomic_write_json(args.out, {"args": vars(args), "eps_step": eps_step, "n_test": len(data.x_test),
                                     "results": results}, indent=2)


if __name__ == "__main__":
    main()
