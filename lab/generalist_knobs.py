"""Sweep Generalist's knobs against PGD-AT at a short budget (one configuration per call).

    python lab/generalist_knobs.py NAME '{"ema_decay": 0.0}' --epochs 8
    python lab/generalist_knobs.py pgd_at '{"baseline": true}'

JSON keys are GeneralistTrainer arguments, plus ``baseline`` (train PGD-AT instead),
``official_opt`` (LearnerSpec.official optimizers) and ``beta_end`` (β knots (1, 1, 1, beta_end)).
Prints one JSON line: clean and PGD-20 test accuracy, training seconds and the run's ``record``
(lab/record.py).
"""
from __future__ import annotations

import argparse
import json
import time

import torch
from record import run_record

from art_generalist import GeneralistTrainer, LearnerSpec, SingleLearnerTrainer
from art_generalist.core.attack import madry_step
from art_generalist.data import load_dataset
from art_generalist.estimators import build_classifier
from art_generalist.models import get_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name")
    p.add_argument("config", help="JSON object of GeneralistTrainer arguments")
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--data-root", default=None)
    p.add_argument("--n-train", type=int, default=4000)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--max-iter", type=int, default=5)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    kw = json.loads(args.config)
    data = load_dataset(args.dataset, root=args.data_root, n_train=args.n_train, n_test=args.n_test, seed=0)
    torch.manual_seed(0)
    model = get_model("smallcnn", data.input_shape[0], data.nb_classes, data.input_shape[-1])
    clf = build_classifier(model, data, lr=args.lr)
    budget = dict(eps=args.eps, eps_step=madry_step(args.eps, args.max_iter), max_iter=args.max_iter, verbose=False,
                  val_max_iter=0)
    if kw.pop("baseline", False):
        trainer = SingleLearnerTrainer(clf, objective=kw.pop("objective", "pgd"), lr_schedule="official", **budget)
    else:
        if kw.pop("official_opt", False):
            kw["learners"] = LearnerSpec.official(args.lr)
        if "beta_end" in kw:
            kw["beta_schedule"] = ((0, 1 / 3, 2 / 3, 1), (1, 1, 1, kw.pop("beta_end")))
        trainer = GeneralistTrainer(clf, **budget, **kw)
    start = time.perf_counter()
    trainer.fit(data.x_train, data.y_train, nb_epochs=args.epochs, batch_size=128)
    seconds = time.perf_counter() - start
    torch.manual_seed(1)
    clean, pgd = trainer.accuracy(data.x_test, data.y_test, pgd_steps=20)
    print(json.dumps({"name": args.name, "config": args.config, "clean": round(clean, 4), "pgd20": round(pgd, 4),
                      "seconds": round(seconds), "record": run_record()}), flush=True)


if __name__ == "__main__":
    main()
