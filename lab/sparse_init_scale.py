"""Does Flying Bird need a sparse-aware initialisation on a model without normalisation layers?

Flying Bird starts from random masks; on SmallCNN (no BatchNorm) a 20 % density shrinks every
layer's output, and the run can sit at chance for epochs. This trains Flying Bird with
``init_scale="none"`` (official) and ``"fan_in"`` from the same initial weights and masks, per
seed, and prints, per epoch, the validation PGD accuracy, then the test clean and PGD-20 accuracy
on the same points with the paired counts (points right under one setting only).

    python lab/sparse_init_scale.py --data-root ../shared/data --seeds 0 1
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from art_generalist import SingleLearnerTrainer  # noqa: E402
from art_generalist.core.attack import madry_step  # noqa: E402
from art_generalist.data import load_dataset  # noqa: E402
from art_generalist.estimators import build_classifier  # noqa: E402
from art_generalist.evaluation import evaluate  # noqa: E402
from art_generalist.models import get_model  # noqa: E402
from art_generalist.sparse import FlyingBird  # noqa: E402

SCALES = ("none", "fan_in")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--data-root", default=None)
    p.add_argument("--n-train", type=int, default=2000)
    p.add_argument("--n-val", type=int, default=500)
    p.add_argument("--n-eval", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--density", type=float, default=0.2)
    p.add_argument("--init", default="erk")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = p.parse_args()
    torch.set_num_threads(1)
    data = load_dataset(args.dataset, root=args.data_root, seed=0, n_train=args.n_train + args.n_val,
                        n_test=args.n_eval)
    x_tr, y_tr = data.x_train[:args.n_train], data.y_train[:args.n_train]
    val = (data.x_train[args.n_train:], data.y_train[args.n_train:])
    print(f"{args.dataset}: Flying Bird, density {args.density} ({args.init}), SmallCNN, eps {args.eps}, PGD-5 "
          f"training, {args.n_train} images x {args.epochs} epochs, {args.n_eval} test points")
    for seed in args.seeds:
        right = {}
        for scale in SCALES:
            torch.manual_seed(seed)  # the same initial weights; the plug-in's seed gives the same masks
            np.random.seed(seed)
            clf = build_classifier(get_model("smallcnn", 1, 10, 28), data)
            sparsity = FlyingBird(args.density, init=args.init, seed=seed, init_scale=scale)
            trainer = SingleLearnerTrainer(clf, objective="pgd", eps=args.eps, eps_step=madry_step(args.eps, 5),
                                           max_iter=5, verbose=False, sparsity=sparsity, lr_schedule="official")
            history = trainer.fit(x_tr, y_tr, validation_data=val, nb_epochs=args.epochs, batch_size=128)
            curve = " ".join(f"{r['val_pgd_acc']:.2f}" for r in history)
            report = evaluate(trainer.get_classifier(), data.x_test, data.y_test, eps=args.eps, attacks=("pgd",),
                              pgd_steps=20, seed=seed, progress=False)
            right[scale] = (report.per_example["clean"], report.per_example["robust"])
            print(f"seed {seed} init_scale={scale:6s} val PGD per epoch: {curve} | test clean "
                  f"{report.clean_acc:.3f} PGD-20 {report.robust_acc:.3f}")
        for i, what in enumerate(("clean", "PGD-20")):
            a, b = (np.asarray(right[s][i], dtype=bool) for s in SCALES)
            print(f"seed {seed} {what}: right with none only {int((a & ~b).sum())}, with fan_in only "
                  f"{int((~a & b).sum())}")


if __name__ == "__main__":
    main()
