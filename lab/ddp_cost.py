"""On paper: what one epoch of Generalist costs on CIFAR-10 and on ImageNet at N = 8, 64 and 512 GPUs,
and where the gradient all-reduce starts to bind.

FLOPs are measured, not assumed: ``SparseFlops`` (``torch.utils.flop_counter`` on the real model,
one example) gives the forward, the training backward and the attack's input-only backward.
Per training example, Generalist costs one PGD-k adversarial step of the robust learner
(k × (forward + input backward) + forward + backward) plus one natural step (forward + backward).
Everything else is an assumption, printed with the table and set by the options:

* ``--tflops``: the throughput one GPU achieves on these convolutions and matrix products (bf16).
  The default, 60 TFLOP/s, is an assumption of about 6% of an H100's dense bf16 peak: networks on
  32×32 images with per-GPU batches of 64 reach a small fraction of peak. It has not been measured
  here (this task had no GPU); pass your own.
* ``--per-gpu``: at least this many examples per GPU, so the global batch grows with N beyond the
  paper's (128 on CIFAR-10, 512 on ImageNet); large-batch adversarial training needs its own lr
  tuning, which is not modelled.
* ``--intra-gbs`` / ``--inter-gbs``: all-reduce bus bandwidth per GPU inside a node of 8 (NVLink)
  and across nodes (InfiniBand, 400 Gb/s per GPU = 50 GB/s).
* The package reduces each learner's gradients with one all-reduce of one flat fp32 buffer after
  the backward pass, not overlapped with it (DDP's bucketing would overlap it): per step a ring
  all-reduce moves ``2 (N-1)/N`` × (2 learners × parameters × 4 bytes) per GPU, and that time adds
  to the step.

    python lab/ddp_cost.py > lab/results/ddp_cost.md
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from art_generalist.models import get_model  # noqa: E402
from art_generalist.sparse.flops import SparseFlops  # noqa: E402

SETUPS = {  # name: (model builder, input shape, training examples per epoch, PGD steps, global batch)
    "CIFAR-10, ResNet-18, PGD-10": (lambda: get_model("resnet18", 3, 10, 32), (3, 32, 32), 50_000, 10, 128),
    "CIFAR-10, WRN-34-10, PGD-10": (lambda: get_model("wrn34_10", 3, 10, 32), (3, 32, 32), 50_000, 10, 128),
    "ImageNet, ResNet-50, PGD-3": (None, (3, 224, 224), 1_281_167, 3, 512),
}


def resnet50():
    import torchvision

    return torchvision.models.resnet50(num_classes=1000)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tflops", type=float, default=60.0, help="achieved TFLOP/s per GPU (an assumption)")
    p.add_argument("--per-gpu", type=int, default=64, help="minimum examples per GPU")
    p.add_argument("--intra-gbs", type=float, default=350.0, help="all-reduce bus GB/s per GPU inside a node of 8")
    p.add_argument("--inter-gbs", type=float, default=50.0, help="all-reduce bus GB/s per GPU across nodes")
    p.add_argument("--gpus", default="8,64,512")
    args = p.parse_args()
    gpus = [int(g) for g in args.gpus.split(",")]
    print(f"Assumptions: {args.tflops:g} TFLOP/s achieved per GPU; at least {args.per_gpu} examples per GPU; "
          f"all-reduce at {args.intra_gbs:g} GB/s per GPU "
          f"within a node of 8, {args.inter_gbs:g} GB/s across nodes; not overlapped with the backward pass.\n")
    print("| setup | params | GFLOPs / example (fwd; Generalist step) | epoch PFLOPs | N GPUs | global batch | "
          "GPU-hours / epoch | wall s / epoch | compute ms / step | all-reduce ms / step | comm share | "
          "per-GPU batch where all-reduce = compute |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, (build, shape, examples, k, batch) in SETUPS.items():
        model = (build or resnet50)()
        flops = SparseFlops.measure(model, shape)
        fwd = flops.inference(sparse=False)
        per_example = flops.adversarial_training(k, sparse=False) + flops.natural_training(sparse=False)
        params = sum(p.numel() for p in model.parameters())
        epoch = per_example * examples
        for n in gpus:
            global_batch = max(batch, args.per_gpu * n)
            steps = -(-examples // global_batch)
            compute = per_example * global_batch / n / (args.tflops * 1e12)
            bandwidth = args.intra_gbs if n <= 8 else args.inter_gbs
            comm = 2 * (n - 1) / n * (2 * params * 4) / (bandwidth * 1e9)
            wall = steps * (compute + comm)
            print(f"| {name} | {params / 1e6:.1f} M | {fwd / 1e9:.2f}; {per_example / 1e9:.1f} | {epoch / 1e15:.2f} | "
                  f"{n} | {global_batch} | {wall * n / 3600:.3f} | {wall:.1f} | {compute * 1e3:.1f} | "
                  f"{comm * 1e3:.1f} | {comm / (compute + comm):.0%} | {comm * args.tflops * 1e12 / per_example:.1f} |")


if __name__ == "__main__":
    main()
