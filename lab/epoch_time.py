"""Time one epoch of GeneralistTrainer.fit against one epoch of ART's AdversarialTrainerMadryPGD.fit.

Same model (SmallCNN), data (the first N MNIST training images by a fixed seed), batch size,
optimizer and PGD budget (ART's eps in [0, 1] units), interleaved runs, medians printed.
Generalist does one more forward/backward pass per batch (the natural learner) plus three EMA
updates; ART's Madry trainer does PGD in numpy round trips with 32-example sub-batches.

    python lab/epoch_time.py --data-root ../shared/data --repeats 5
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from art.defences.trainer import AdversarialTrainerMadryPGD
from art.estimators.classification import PyTorchClassifier
from record import run_record

from art_generalist import GeneralistTrainer
from art_generalist.data import load_dataset
from art_generalist.estimators import build_classifier
from art_generalist.models import SmallCNN
from art_generalist.state.files import atomic_write_json


def classifier(data, device: str, seed: int) -> PyTorchClassifier:
    torch.manual_seed(seed)
    model = SmallCNN(in_channels=data.input_shape[0], num_classes=data.nb_classes, input_size=data.input_shape[-1])
    return build_classifier(model, data, lr=0.01, weight_decay=0.0, device=device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data-root", default=None)
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--eps", type=float, default=0.3)
    p.add_argument("--eps-step", type=float, default=0.01)
    p.add_argument("--max-iter", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", action="store_true", help="bf16 autocast for Generalist")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--skip-art", action="store_true")
    p.add_argument("--also-channels-last", action="store_true",
                   help="also time Generalist with channels_last (a third interleaved timing)")
    p.add_argument("--json", default=None, help="write the timings here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset(args.dataset, root=args.data_root, n_train=args.n, n_test=16)
    x, y = data.x_train, data.y_train
    times: dict[str, list[float]] = {"art_madry": [], "generalist": []}
    variants = {"generalist": dict(amp=args.amp, channels_last=args.channels_last)}
    if args.also_channels_last:
        times["generalist_channels_last"] = []
        variants["generalist_channels_last"] = dict(amp=args.amp, channels_last=True)
    for rep in range(args.repeats):
        if not args.skip_art:
            art = AdversarialTrainerMadryPGD(classifier(data, args.device, rep), nb_epochs=1,
                                             batch_size=args.batch_size, eps=args.eps, eps_step=args.eps_step,
                                             max_iter=args.max_iter)
            start = time.perf_counter()
            art.fit(x, y)
            times["art_madry"].append(time.perf_counter() - start)
        for name, options in variants.items():
            gen = GeneralistTrainer(classifier(data, args.device, rep), eps=args.eps, eps_step=args.eps_step,
                                    max_iter=args.max_iter, verbose=False, **options)
            start = time.perf_counter()
            gen.fit(x, y, nb_epochs=1, batch_size=args.batch_size)
            if args.device == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
        print(f"repeat {rep}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items() if v), flush=True)
    med = {k: statistics.median(v) for k, v in times.items() if v}
    for k, v in med.items():
        print(f"{k:12s} median {v:7.2f} s/epoch  {args.n / v:7.1f} ex/s")
    if "art_madry" in med:
        for name in variants:
            print(f"ratio {name} / art_madry = {med[name] / med['art_madry']:.3f}")
    if args.json:
        atomic_write_json(args.json, {"args": vars(args), "times": times, "median": med, "torch": torch.__version__,
                                      "record": run_record()}, indent=2)


if __name__ == "__main__":
    main()
