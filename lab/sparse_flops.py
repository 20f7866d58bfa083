"""Training and inference FLOPs of a random sparse mask at a given density, per layer-density rule.

For each model and each rule (uniform, ERK, IGQ), builds the masks Flying Bird starts from and
measures, with the package's counter on the real model (``SparseFlops``), the PGD-k training
FLOPs and the inference FLOPs relative to the dense model. The official ``flops.py`` scales the
whole sparse stage by the global density instead, which gives the density itself whatever the
rule.

    python lab/sparse_flops.py --density 0.2
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from art_generalist.models import get_model  # noqa: E402
from art_generalist.sparse.densities import METHODS, layer_densities  # noqa: E402
from art_generalist.sparse.flops import SparseFlops  # noqa: E402
from art_generalist.sparse.masks import Masks  # noqa: E402

MODELS = {"smallcnn": (1, 28, 28), "resnet18": (3, 32, 32), "preact_resnet18": (3, 32, 32)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--density", type=float, default=0.2)
    p.add_argument("--attack-steps", type=int, default=10)
    args = p.parse_args()
    print(f"| model | rule | global density | PGD-{args.attack_steps} training FLOPs / dense | "
          "inference FLOPs / dense |")
    print("|---|---|---|---|---|")
    for name, shape in MODELS.items():
        model = get_model(name, shape[0], 10, shape[-1])
        for rule in METHODS:
            torch.manual_seed(0)
            masks = Masks.from_densities(model, layer_densities(model, args.density, rule))
            flops = SparseFlops.measure(model, shape, masks)
            train = flops.adversarial_training(args.attack_steps) / flops.adversarial_training(args.attack_steps,
                                                                                               sparse=False)
            print(f"| {name} | {rule} | {masks.density():.3f} | {train:.3f} | "
                  f"{flops.inference() / flops.inference(sparse=False):.3f} |")


if __name__ == "__main__":
    main()
