"""Anatomy of Generalist at β ≡ 1: every learner, teacher and the global learner against PGD-AT.

With β ≡ 1 the global learner G is an EMA of the robust learner's EMA teacher, copied back into
the base learners in the distribution windows. This script trains one configuration per call on
the short Fashion-MNIST setting of the time-scales study (8,000 training and 1,000 test images,
SmallCNN, ε = 0.1, PGD-5 training, 15 epochs = 945 iterations, lr 0.05 with the official
piecewise schedule evaluated per iteration) and appends one JSON line to a results file: clean
and PGD-20 accuracy of each model with its per-example correctness (strings of ``0``/``1``, one
character per test point), the training time, the distances between θ_R, its teacher and G, and
optional checks. Subcommands:

``train``
    One run. ``--method pgd_at`` trains PGD-AT (one learner, evaluated as ``global``);
    ``--method generalist`` trains Generalist and evaluates ``global``, ``robust`` and
    ``teacher:robust`` (clean and PGD-20) and ``natural``, ``teacher:natural`` (clean).
    ``--no-distribution`` moves t' beyond the budget (no windows); ``--one-way`` copies G into
    the natural learner only; ``--probe-points N`` measures θ_R and G on the first N test points
    just before the first copy of every window (RNG forked: training is unchanged);
    ``--save-state``/``--compare-state`` write the trained (robust) model's state_dict and
    compare it key by key with ``torch.equal``.
``trajectory``
    Load every epoch checkpoint of a ``train --checkpoint-dir`` run into an identically built
    trainer and measure PGD-20 of ``global`` and ``robust`` on the first N test points and the
    L2 distance between θ_R and G. Appends one JSON line.
``report``
    Markdown tables of the results file: every model of every run with exact McNemar p-values
    (paired on the test points) against a reference model (``RUN`` or ``RUN:MODEL``, default
    model ``global``), the window probes and the checkpoint trajectories.

Usage (run as a script from the repository root, so that ``lab/paired.py`` is importable;
one torch thread by default)::

    python lab/generalist_anatomy.py train A_pgd_at --method pgd_at --data-root DATA \\
        --save-state anatomy/pgd_at.pt
    python lab/generalist_anatomy.py train B_ema0999 --ema-decay 0.999 --data-root DATA
    python lab/generalist_anatomy.py train C_ema095 --ema-decay 0.95 --data-root DATA \\
        --checkpoint-dir anatomy/ckC --probe-points 500
    python lab/generalist_anatomy.py train D_ema095_nodist --ema-decay 0.95 --no-distribution \\
        --data-root DATA --compare-state anatomy/pgd_at.pt
    python lab/generalist_anatomy.py train G2 --ema-decay 0.95 --one-way --beta official \\
        --data-root DATA
    python lab/generalist_anatomy.py trajectory F_trajC --ema-decay 0.95 --data-root DATA \\
        --checkpoint-dir anatomy/ckC --first-epoch 9 --points 500
    python lab/generalist_anatomy.py report --reference A_pgd_at

SmallCNN's dropout draws random numbers in every training forward pass, the natural learner's
included, so Generalist's θ_R and a PGD-AT model follow different random streams from the
second iteration on; ``--no-dropout`` removes the dropout layer to compare them bit for bit.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from record import run_record

from art_generalist import GeneralistTrainer, SingleLearnerTrainer
from art_generalist.benchmark.paired import mcnemar_exact
from art_generalist.core.attack import madry_step
from art_generalist.data import load_dataset
from art_generalist.estimators import build_classifier
from art_generalist.methods import TensorTrainer
from art_generalist.methods.generalist import Generalist
from art_generalist.models import get_model
from art_generalist.train import list_checkpoints
from art_generalist.train.validation import madry_attack, robust_flags
from art_generalist.transfer.experiment import append_jsonl, read_jsonl

#: β ≡ 1: the global learner never takes the natural teacher.
BETA_ONE = ((0, 1), (1, 1))
#: Models evaluated under PGD; the natural learner and its teacher are evaluated clean only.
ROBUST_MODELS = ("global", "robust", "teacher:robust")
CLEAN_MODELS = ("natural", "teacher:natural")
#: t' in epochs far beyond any budget used here: no distribution window.
NO_DISTRIBUTION = 1000
#: Called with the engine just before the first copy of a distribution window.
Probe = Callable[[Generalist], None]


# -- evaluation ----------------------------------------------------------------------------------
def correctness(trainer: TensorTrainer, name: str, u: torch.Tensor, y: torch.Tensor, pgd_steps: int,
                seed: int, batch_size: int = 512) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Per-example clean and PGD correctness of model ``name``, exactly as
    :meth:`TensorTrainer.accuracy` computes its means after ``torch.manual_seed(seed)``: the same
    attack (2.5·eps/steps), the same batches, PGD run only on the clean-correct points."""
    space = trainer.models()[name]
    torch.manual_seed(seed)
    clean_ok, adv_ok, _ = robust_flags(space, u, y, madry_attack(space, trainer.norm, trainer.eps, pgd_steps),
                                       batch_size)
    return clean_ok, adv_ok


def bits(flags: torch.Tensor) -> str:
    """Per-example correctness as a string of ``0``/``1``."""
    return "".join("1" if f else "0" for f in flags.tolist())


def param_distance(a: torch.nn.Module, b: torch.nn.Module) -> float:
    """L2 distance between the parameters of two models of one architecture."""
    pb = dict(b.named_parameters())
    return math.sqrt(sum(float((p.detach() - pb[n].detach()).pow(2).sum()) for n, p in a.named_parameters()))


def param_norm(a: torch.nn.Module) -> float:
    """L2 norm of a model's parameters."""
    return math.sqrt(sum(float(p.detach().pow(2).sum()) for p in a.parameters()))


# -- the engine variants ---------------------------------------------------------------------------
class AnatomyGeneralist(Generalist):
    """Generalist with two optional changes to the distribution step.

    :param one_way: copy G into the natural learners only (``attack is None``); the robust
        learners are never reset.
    :param probe: called with the engine just before the first copy of every window (after that
        iteration's steps and G update), i.e. when θ_R holds all the progress of the gap.
    """

    def __init__(self, *args: Any, one_way: bool = False, probe: Optional[Probe] = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.one_way, self.probe = one_way, probe
        self._last_copy: Optional[int] = None  # global_ema update count at the last copy

    def distribute(self) -> None:
        now = self.global_ema.num_updates
        if self.probe is not None and self._last_copy != now - 1:
            self.probe(self)
        self._last_copy = now
        for learner in self.learners:
            if not (self.one_way and learner.attack is not None):
                self.global_ema.mixer.copy_(learner.model, self.global_ema.module)


class AnatomyTrainer(GeneralistTrainer):
    """:class:`GeneralistTrainer` running :class:`AnatomyGeneralist`."""

    def __init__(self, *args: Any, one_way: bool = False, probe: Optional[Probe] = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.one_way, self.probe = one_way, probe

    def engine(self, nb_epochs: int) -> Generalist:
        self.distribution.windows(nb_epochs)
        return AnatomyGeneralist(self.learners, self.global_ema, self.config, one_way=self.one_way,
                                 probe=self.probe)


class WindowProbe:
    """PGD accuracy of θ_R and G on fixed points, and their distance, at each window start.

    The evaluation runs inside ``torch.random.fork_rng`` with its own seed, so the training
    stream of random numbers is the same as without the probe.
    """

    def __init__(self, trainer: AnatomyTrainer, u: torch.Tensor, y: torch.Tensor, pgd_steps: int, seed: int,
                 nb_batches: int) -> None:
        self.trainer, self.u, self.y, self.pgd_steps, self.seed = trainer, u, y, pgd_steps, seed
        self.nb_batches = nb_batches
        self.records: list[dict] = []
        self.seconds = 0.0

    def __call__(self, engine: Generalist) -> None:
        start = time.perf_counter()
        robust = next(lrn for lrn in engine.learners if lrn.attack is not None)
        record = {"iteration": engine.global_ema.num_updates,
                  "epoch": round(engine.global_ema.num_updates / self.nb_batches, 4),
                  "lr": robust.optimizer.param_groups[0]["lr"],
                  "dist_robust_global": param_distance(robust.model, engine.global_ema.module),
                  "dist_teacher_global": param_distance(robust.teacher.module, engine.global_ema.module)}
        with torch.random.fork_rng():
            for name in ("robust", "global"):
                clean, adv = correctness(self.trainer, name, self.u, self.y, self.pgd_steps, self.seed)
                record[name] = {"clean": clean.float().mean().item(), "pgd": adv.float().mean().item()}
        self.records.append(record)
        self.seconds += time.perf_counter() - start


# -- building a run ----------------------------------------------------------------------------------
def load_data(args: argparse.Namespace):
    """The fixed split of the study (``seed=0``: the same points in every run)."""
    return load_dataset(args.dataset, root=args.data_root, n_train=args.n_train, n_test=args.n_test, seed=0)


def build_trainer(args: argparse.Namespace, data: Any) -> TensorTrainer:
    """The trainer of one configuration, built from ``torch.manual_seed(args.seed)``."""
    torch.manual_seed(args.seed)
    model = get_model("smallcnn", data.input_shape[0], data.nb_classes, data.input_shape[-1])
    if args.no_dropout:
        model.classifier.drop = torch.nn.Identity()
    clf = build_classifier(model, data, lr=args.lr)
    common = dict(eps=args.eps, eps_step=madry_step(args.eps, args.max_iter), max_iter=args.max_iter,
                  per_iteration_schedules=True, val_max_iter=0, verbose=False)
    if args.method == "pgd_at":
        return SingleLearnerTrainer(clf, objective="pgd", lr_schedule="official", **common)
    extra = {"distribute_start": NO_DISTRIBUTION} if args.no_distribution else {}
    trainer = AnatomyTrainer(clf, ema_decay=args.ema_decay,
                             beta_schedule=BETA_ONE if args.beta == "one" else "official",
                             one_way=args.one_way, **common, **extra)
    if args.no_distribution and trainer.distribution.windows(args.epochs) != []:
        raise RuntimeError("--no-distribution left distribution windows in the budget.")
    return trainer


def config(args: argparse.Namespace) -> dict:
    keys = ("method", "ema_decay", "beta", "no_distribution", "one_way", "dataset", "n_train", "n_test", "epochs",
            "eps", "max_iter", "lr", "pgd_steps", "seed", "eval_seed", "no_dropout")
    cfg = {k: getattr(args, k) for k in keys}
    if args.method == "pgd_at":
        for k in ("ema_decay", "beta", "no_distribution", "one_way"):
            cfg.pop(k)
    return cfg


def robust_state(trainer: TensorTrainer) -> dict:
    """The state_dict of the adversarially trained model: PGD-AT's model or Generalist's θ_R."""
    if isinstance(trainer, GeneralistTrainer):
        return trainer.robust_classifier.model.state_dict()
    return trainer.global_space.model.state_dict()


def compare_states(mine: dict, reference: dict) -> dict:
    """Key-by-key ``torch.equal`` of two state_dicts, with the largest absolute difference."""
    equal = {k: bool(torch.equal(mine[k], reference[k])) for k in reference}
    max_abs = max(float((mine[k].float() - reference[k].float()).abs().max()) for k in reference)
    return {"bit_identical": all(equal.values()), "keys_equal": sum(equal.values()), "keys": len(equal),
            "max_abs_diff": max_abs, "dist_l2": math.sqrt(sum(float((mine[k].float() - reference[k].float())
                                                                    .pow(2).sum()) for k in reference))}


def append(path: str, record: dict) -> None:
    """One fsynced line; a line a kill cut short is dropped (with a warning) when the log is read."""
    append_jsonl(Path(path), record)


# -- subcommands ------------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> None:
    data = load_data(args)
    trainer = build_trainer(args, data)
    u, y = trainer._to_device(data.x_test, data.y_test)
    probe = None
    if args.probe_points:
        if not isinstance(trainer, AnatomyTrainer):
            raise SystemExit("--probe-points needs --method generalist.")
        nb_batches = math.ceil(len(data.x_train) / args.batch_size)
        probe = WindowProbe(trainer, u[:args.probe_points], y[:args.probe_points], args.pgd_steps,
                            args.eval_seed, nb_batches)
        trainer.probe = probe
    fit = {}
    if args.checkpoint_dir:
        fit = dict(checkpoint_dir=args.checkpoint_dir, checkpoint_every=1, keep_last=100)
    start = time.perf_counter()
    history = trainer.fit(data.x_train, data.y_train, nb_epochs=args.epochs, batch_size=args.batch_size, **fit)
    seconds = time.perf_counter() - start - (probe.seconds if probe else 0.0)

    record: dict[str, Any] = {"kind": "train", "name": args.name, "config": config(args),
                              "train_seconds": round(seconds, 1), "models": {}, "record": run_record()}
    generalist = isinstance(trainer, GeneralistTrainer)
    names = ROBUST_MODELS + CLEAN_MODELS if generalist else ("global",)
    for name in names:
        steps = args.pgd_steps if name in ROBUST_MODELS else 0
        clean, adv = correctness(trainer, name, u, y, steps, args.eval_seed)
        entry = {"clean": clean.float().mean().item(), "clean_bits": bits(clean)}
        if adv is not None:
            entry.update(pgd=adv.float().mean().item(), pgd_bits=bits(adv))
        record["models"][name] = entry
    torch.manual_seed(args.eval_seed)  # the documented evaluation, to check the per-example variant
    clean, pgd = trainer.accuracy(data.x_test, data.y_test, model="global", pgd_steps=args.pgd_steps)
    mine = record["models"]["global"]
    record["accuracy_matches_trainer"] = clean == mine["clean"] and pgd == mine["pgd"]

    if generalist:
        robust = next(lrn for lrn in trainer.learners if lrn.attack is not None)
        g = trainer.global_ema.module
        record.update(
            windows=trainer.distribution.windows(args.epochs),
            distributions=sum(r["distributions"] for r in history),
            final_decay={"global": trainer.global_ema.current_decay(), "teacher": robust.teacher.current_decay()},
            distances={"robust_global": param_distance(robust.model, g),
                       "teacher_global": param_distance(robust.teacher.module, g),
                       "robust_teacher": param_distance(robust.model, robust.teacher.module),
                       "norm_global": param_norm(g)})
    if probe is not None:
        record["probe"] = {"points": args.probe_points, "seconds": round(probe.seconds, 1), "windows": probe.records}
    state = {k: v.detach().clone() for k, v in robust_state(trainer).items()}
    if args.save_state:
        Path(args.save_state).parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, args.save_state)
    if args.compare_state:
        record["state_vs_reference"] = {"reference": args.compare_state,
                                        **compare_states(state, torch.load(args.compare_state))}
    append(args.out, record)
    summary = {k: v for k, v in record.items() if k not in ("models", "probe", "record")}
    summary["acc"] = {n: (round(m["clean"], 4), round(m.get("pgd", float("nan")), 4))
                      for n, m in record["models"].items()}
    print(json.dumps(summary), flush=True)


def cmd_trajectory(args: argparse.Namespace) -> None:
    data = load_data(args)
    found = list_checkpoints(args.checkpoint_dir)
    if not found:
        raise SystemExit(f"No checkpoint in {args.checkpoint_dir}.")
    epochs = []
    for path in found:
        trainer = build_trainer(args, data)
        trainer.load_checkpoint(path)
        epoch = trainer.progress.epoch
        if epoch < args.first_epoch:
            continue
        u, y = trainer._to_device(data.x_test[:args.points], data.y_test[:args.points])
        robust = next(lrn for lrn in trainer.learners if lrn.attack is not None)
        entry = {"epoch": epoch, "dist_robust_global": param_distance(robust.model, trainer.global_ema.module),
                 "dist_teacher_global": param_distance(robust.teacher.module, trainer.global_ema.module)}
        for name in ("global", "robust"):
            clean, adv = correctness(trainer, name, u, y, args.pgd_steps, args.eval_seed)
            entry[name] = {"clean": clean.float().mean().item(), "pgd": adv.float().mean().item(),
                           "pgd_bits": bits(adv)}
        epochs.append(entry)
        print(json.dumps({"epoch": epoch, "dist_robust_global": entry["dist_robust_global"],
                          **{n: (entry[n]["clean"], entry[n]["pgd"]) for n in ("global", "robust")}}), flush=True)
    append(args.out, {"kind": "trajectory", "name": args.name, "config": config(args),
                      "checkpoint_dir": args.checkpoint_dir, "points": args.points, "epochs": epochs,
                      "record": run_record()})


def cmd_report(args: argparse.Namespace) -> None:
    lines = read_jsonl(Path(args.out))
    runs = [r for r in lines if r["kind"] == "train"]
    ref_name, _, ref_model_name = args.reference.partition(":")
    ref = next((r for r in runs if r["name"] == ref_name), None)
    if ref is None:
        raise SystemExit(f"No train run named {ref_name!r} in {args.out}.")
    ref_model = ref["models"][ref_model_name or "global"]

    def p_value(entry: dict, key: str) -> str:
        if f"{key}_bits" not in entry:
            return "–"
        a, b = entry[f"{key}_bits"], ref_model[f"{key}_bits"]
        only_a = sum(x == "1" and z == "0" for x, z in zip(a, b))
        only_b = sum(x == "0" and z == "1" for x, z in zip(a, b))
        return f"{mcnemar_exact(only_a, only_b):.3g} ({only_a}/{only_b})"

    print(f"McNemar p against {args.reference} (in brackets: points only this model / only the reference gets right)")
    print()
    print("| run | model | clean | PGD-20 | McNemar p clean | McNemar p PGD-20 | train s |")
    print("|---|---|---|---|---|---|---|")
    for run in runs:
        for name, entry in run["models"].items():
            pgd = f"{100 * entry['pgd']:.1f}" if "pgd" in entry else "–"
            print(f"| {run['name']} | {name} | {100 * entry['clean']:.1f} | {pgd} | {p_value(entry, 'clean')} | "
                  f"{p_value(entry, 'pgd')} | {run['train_seconds']:.0f} |")
    for run in (r for r in runs if "probe" in r):
        print(f"\nWindow starts of {run['name']} (first {run['probe']['points']} test points, "
              f"θ_R just before its reset):\n")
        print("| iteration | epoch | lr | ‖θ_R − G‖ | ‖T_R − G‖ | θ_R clean | θ_R PGD-20 | G clean | G PGD-20 |")
        print("|---|---|---|---|---|---|---|---|---|")
        for w in run["probe"]["windows"]:
            r, g = w["robust"], w["global"]
            print(f"| {w['iteration']} | {w['epoch']:.2f} | {w['lr']:.4f} | {w['dist_robust_global']:.3f} | "
                  f"{w['dist_teacher_global']:.3f} | {100 * r['clean']:.1f} | {100 * r['pgd']:.1f} | "
                  f"{100 * g['clean']:.1f} | {100 * g['pgd']:.1f} |")
    for traj in (r for r in lines if r["kind"] == "trajectory"):
        print(f"\nEpoch checkpoints of {traj['checkpoint_dir']} ({traj['name']}, "
              f"first {traj['points']} test points):\n")
        print("| epoch | ‖θ_R − G‖ | ‖T_R − G‖ | θ_R clean | θ_R PGD-20 | G clean | G PGD-20 |")
        print("|---|---|---|---|---|---|---|")
        for e in traj["epochs"]:
            r, g = e["robust"], e["global"]
            print(f"| {e['epoch']} | {e['dist_robust_global']:.3f} | {e['dist_teacher_global']:.3f} | "
                  f"{100 * r['clean']:.1f} | {100 * r['pgd']:.1f} | {100 * g['clean']:.1f} | {100 * g['pgd']:.1f} |")


# -- command line ---------------------------------------------------------------------------------------
def add_setup(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="label of the run in the results file")
    p.add_argument("--method", choices=("generalist", "pgd_at"), default="generalist")
    p.add_argument("--ema-decay", type=float, default=0.999, help="decay of every EMA (package default 0.999)")
    p.add_argument("--beta", choices=("one", "official"), default="one",
                   help="β ≡ 1 or the official schedule (1, 1, 1, 0.4)")
    p.add_argument("--no-distribution", action="store_true", help="no distribution window (t' beyond the budget)")
    p.add_argument("--one-way", action="store_true", help="copy G into the natural learner only")
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--data-root", default=None)
    p.add_argument("--n-train", type=int, default=8000)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--max-iter", type=int, default=5, help="training PGD steps (step 2.5·eps/steps)")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--pgd-steps", type=int, default=20, help="evaluation PGD steps")
    p.add_argument("--seed", type=int, default=0, help="model initialisation and training stream")
    p.add_argument("--eval-seed", type=int, default=1, help="seed set before each model's evaluation")
    p.add_argument("--no-dropout", action="store_true",
                   help="replace SmallCNN's dropout by the identity: the natural learner then draws no random "
                        "numbers (for the bit-identity check against PGD-AT)")
    p.add_argument("--threads", type=int, default=1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="anatomy/results.jsonl", help="results file (JSON lines, appended)")
    sub = p.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train and evaluate one configuration")
    add_setup(train)
    train.add_argument("--checkpoint-dir", default=None, help="write a checkpoint after every epoch")
    train.add_argument("--probe-points", type=int, default=0,
                       help="probe θ_R and G on this many test points at every window start (0: off)")
    train.add_argument("--save-state", default=None, help="save the (robust) model's state_dict here")
    train.add_argument("--compare-state", default=None, help="compare the (robust) model with this state_dict")
    traj = sub.add_parser("trajectory", help="evaluate the epoch checkpoints of a run")
    add_setup(traj)
    traj.add_argument("--checkpoint-dir", required=True)
    traj.add_argument("--first-epoch", type=int, default=1)
    traj.add_argument("--points", type=int, default=500, help="first test points to evaluate")
    report = sub.add_parser("report", help="markdown table with McNemar p-values against a reference run")
    report.add_argument("--reference", default="A_pgd_at",
                        help="run name, optionally with a model (RUN:MODEL, default model global)")
    args = p.parse_args()
    if args.command == "report":
        cmd_report(args)
        return
    torch.set_num_threads(args.threads)
    if args.command == "train":
        cmd_train(args)
    else:
        cmd_trajectory(args)


if __name__ == "__main__":
    main()
