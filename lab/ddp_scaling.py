"""Data-parallel scaling on this machine: one process against N gloo processes under torchrun.

Trains the same Generalist run through the CLI (``art-generalist train``) three ways on the same
cores: 1 process with 1 thread, 1 process with N threads, and N processes with 1 thread each
(``torchrun --nproc_per_node=N -m art_generalist train``). Reports the training seconds of each
epoch (``history.json``; data loading, validation and export excluded), examples per second,
the speed-up over 1 process × 1 thread, and how far the N-process model is from the 1-process
one (max absolute weight difference; the global batch is the same, so it should be float noise
apart from SmallCNN's dropout, which each rank draws for its own slice).

    python lab/ddp_scaling.py --data-root ../shared/data --out lab/results/ddp_scaling

Run it on an otherwise idle machine: the numbers are wall-clock.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path

from record import run_record

from art_generalist.state.files import atomic_write_json, read_json, remove_stale_temporaries


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(name: str, procs: int, threads: int, train_args: list[str], out: Path) -> dict:
    target = out / name
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = ["-m", "art_generalist", "train", *train_args, "--threads", str(threads), "--out", str(target)]
    if procs > 1:
        cmd = ["-m", "torch.distributed.run", f"--nproc_per_node={procs}", f"--master_port={_port()}", *cmd]
    subprocess.run([sys.executable, *cmd], check=True, env=env)
    history = read_json(target / "history.json")
    seconds = sum(h["seconds"] for h in history)
    examples = sum(h["examples"] for h in history)
    return {"name": name, "processes": procs, "threads_per_process": threads, "train_seconds": seconds,
            "examples": examples, "examples_per_s": examples / seconds}


def max_weight_diff(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return max((wa[k].double() - wb[k].double()).abs().max().item() for k in wa if wa[k].is_floating_point())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--n-train", type=int, default=4096)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--out", default="lab/results/ddp_scaling")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    train_args = ["--dataset", args.dataset, "--data-root", args.data_root, "--n-train", str(args.n_train),
                  "--n-val", "0", "--epochs", str(args.epochs), "--max-iter", "5", "--batch-size", "128",
                  "--quiet", "--seed", "0"]
    n = args.procs
    rows = [run("1proc_1thread", 1, 1, train_args, out), run(f"1proc_{n}threads", 1, n, train_args, out),
            run(f"{n}procs_1thread", n, 1, train_args, out)]
    base = rows[0]["examples_per_s"]
    for row in rows:
        row["speedup"] = row["examples_per_s"] / base
    result = {"command": " ".join(sys.argv), "train_args": train_args, "rows": rows,
              "max_weight_diff_nprocs_vs_1proc": max_weight_diff(out / f"{n}procs_1thread", out / "1proc_1thread"),
              "record": run_record()}
    atomic_write_json(out / "scaling.json", result, indent=2)
    print("| run | processes × threads | train s | examples/s | speed-up |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['processes']} × {r['threads_per_process']} | {r['train_seconds']:.1f} | "
              f"{r['examples_per_s']:.1f} | {r['speedup']:.2f} |")
    print(f"max |weight difference| {n} processes vs 1: {result['max_weight_diff_nprocs_vs_1proc']:.3g}")


if __name__ == "__main__":
    main()
