"""Subprocess worker for the data-parallel tests: one rank of a gloo process group on localhost.

    python tests/_dp_worker.py RANK WORLD_SIZE PORT OUT_DIR [killed | after_kill]

Runs every scenario of :data:`SCENARIOS` in one process group and saves, per scenario, what the
tests compare to ``OUT_DIR/<scenario>-rank<RANK>.pt``.
"""
from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from art_generalist import GeneralistTrainer, SingleLearnerTrainer  # noqa: E402
from art_generalist.core.augment import random_crop_flip  # noqa: E402
from art_generalist.data import load_dataset  # noqa: E402
from art_generalist.sparse import FlyingBird  # noqa: E402
from art_generalist.train.data_parallel import check_in_sync  # noqa: E402
from tests.conftest import FAST, make_classifier, tiny_net  # noqa: E402


def augment(u: torch.Tensor) -> torch.Tensor:
    """Random crops (padding 1) and flips: random draws per example under data parallelism."""
    return random_crop_flip(u, padding=1)


def build(kind: str, bn: bool, **kw):
    """The trainers the tests compare (also built by the single-process references)."""
    clf = make_classifier(tiny_net(0, bn=bn))
    if kind == "generalist":
        return GeneralistTrainer(clf, **FAST, **kw)
    return SingleLearnerTrainer(clf, objective=kind, **FAST, **kw)


def record_shards(trainer, seen: list) -> None:
    """Record the size of every batch each learner steps on."""
    learners = trainer.learners if hasattr(trainer, "learners") else [trainer.learner]
    for lrn in learners:
        step = lrn.step
        lrn.step = lambda u, y, step=step: (seen.append(len(u)), step(u, y))[1]


def fit_run(kind: str, bn: bool, out: Path, rank: int, n: int = 128, nb_epochs: int = 2, trainer_kw=None,
            **fit) -> dict:
    data = load_dataset("digits")
    torch.manual_seed(0)
    trainer = build(kind, bn, augment=augment, **(trainer_kw or {}))
    seen, saved = [], []
    record_shards(trainer, seen)
    save = trainer.save_checkpoint
    trainer.save_checkpoint = lambda path: (saved.append(Path(path).name), save(path))[1]
    history = trainer.fit(data.x_train[:n], data.y_train[:n], nb_epochs=nb_epochs, batch_size=32, **fit)
    return {"models": trainer.state_dict()["models"], "seen": seen, "saved": saved, "history": history,
            "plugins": trainer.plugins.state_dict()}


def step_run(kind: str, bn: bool, shuffle: bool) -> dict:
    """One optimizer step on one global batch of 64, each rank seeded differently (rank 0's RNG wins)."""
    data = load_dataset("digits")
    trainer = build(kind, bn)
    torch.manual_seed(123 + dist.get_rank())
    trainer.fit(data.x_train[:64], data.y_train[:64], nb_epochs=1, batch_size=64, shuffle=shuffle)
    return {"models": trainer.state_dict()["models"]}


def errors() -> dict:
    data = load_dataset("digits")
    found = {}
    cases = {"batch_size": dict(n=64, batch_size=33), "last_batch": dict(n=65, batch_size=32),
             "length": dict(n=64 + dist.get_rank(), batch_size=32)}
    for name, case in cases.items():
        trainer = build("natural", False)
        try:
            trainer.fit(data.x_train[:case["n"]], data.y_train[:case["n"]], nb_epochs=1,
                        batch_size=case["batch_size"])
        except ValueError as err:
            found[name] = str(err)
    try:  # torch's SyncBatchNorm refuses CPU tensors: a clear error before any step
        build("natural", True, sync_batchnorm=True).fit(data.x_train[:64], data.y_train[:64], nb_epochs=1,
                                                         batch_size=32)
    except ValueError as err:
        found["sync_bn"] = str(err)
    return found


def sync_check() -> dict:
    """The debug check passes on identical ranks and names the rank whose weights were changed."""
    trainer = build("natural", False)
    check_in_sync(trainer)
    if dist.get_rank() == 1:
        with torch.no_grad():
            next(trainer.global_space.model.parameters()).view(-1)[0] += 1e-6
    try:
        check_in_sync(trainer)
    except RuntimeError as err:
        return {"error": str(err)}
    return {"error": None}


def trained_classifier():
    """A tiny net given 40 plain SGD steps on 512 digits (no torch.distributed): every rank and the
    single-process reference build the same weights."""
    data = load_dataset("digits")
    model = tiny_net(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.as_tensor(data.x_train[:512]), torch.as_tensor(data.y_train[:512]).long()
    for _ in range(40):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model((x - 0.3053) / 0.3760), y).backward()
        opt.step()
    return make_classifier(model.eval())


EVAL_POINTS = 120


def evaluation() -> dict:
    """``evaluate`` (PGD, CW and AutoAttack in batches of 16) and ``validate``, sharded by batch."""
    from art_generalist import evaluate
    from art_generalist.core.attack import InputSpace
    from art_generalist.train.validation import madry_attack, robust_flags, validate

    data, clf = load_dataset("digits"), trained_classifier()
    x, y = data.x_test[:EVAL_POINTS], data.y_test[:EVAL_POINTS]
    report = evaluate(clf, x, y, eps=0.1, attacks=("pgd", "cw", "autoattack"), aa_version="fast", pgd_steps=5,
                      pgd_restarts=2, batch_size=16, checks="all").to_dict()
    space = InputSpace(clf.model, (0.0, 1.0), 0.3053, 0.3760)
    u, yt = torch.as_tensor(x), torch.as_tensor(y).long()
    torch.manual_seed(5)
    flags = robust_flags(space, u, yt, madry_attack(space, "inf", 0.1, 5), batch_size=16)
    after = torch.rand(3)  # the RNG moved as in one process
    out = {"report": report, "flags": flags, "after": after, "validate": validate(space, u, yt, "inf", 0.1, 5)}
    if dist.is_initialized() and dist.get_rank() == 0:  # rank 0 alone: no rank waits for another
        from art_generalist.parallel.shards import local_only
        with local_only():
            out["alone"] = alone_evaluation(clf, x, y)
    return out


def alone_evaluation(clf, x, y) -> dict:
    from art_generalist import evaluate

    return evaluate(clf, x, y, eps=0.1, attacks=("pgd", "autoattack"), aa_version="fast", pgd_steps=5,
                    batch_size=16).to_dict()


def loader_run(epochs: int = 2) -> dict:
    """fit_loader with a DistributedSampler: 16 examples per rank per step, a new shuffle each epoch."""
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    data = load_dataset("digits")
    dataset = TensorDataset(torch.as_tensor(data.x_train[:128]), torch.as_tensor(data.y_train[:128]))
    sampler = DistributedSampler(dataset, shuffle=True, seed=0)
    orders = []
    trainer = build("natural", False)
    seen: list = []
    record_shards(trainer, seen)
    original = sampler.set_epoch
    sampler.set_epoch = lambda e: (original(e), orders.append(list(iter(sampler))))[0]
    history = trainer.fit_loader(DataLoader(dataset, batch_size=16, sampler=sampler), nb_epochs=epochs)
    return {"models": trainer.state_dict()["models"], "seen": seen, "orders": orders, "history": history}


KILL_AT_STEP = 6  # of the robust learner: mid-way through epoch 2 of 4 steps each


def killed_run(out: Path, rank: int) -> None:
    """The run of ``generalist_fit`` that dies (``os._exit``, no clean-up) at step 6, mid-epoch 2."""
    data = load_dataset("digits")
    torch.manual_seed(0)
    trainer = build("generalist", True, augment=augment)
    learner = trainer.learners[0]
    step, count = learner.step, [0]

    def step_or_die(u, y):
        count[0] += 1
        if count[0] == KILL_AT_STEP:
            os._exit(137)
        return step(u, y)
    learner.step = step_or_die
    trainer.fit(data.x_train[:128], data.y_train[:128], nb_epochs=2, batch_size=32, checkpoint_dir=out / "killed")


def main() -> None:
    rank, size, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
    mode = sys.argv[5] if len(sys.argv) > 5 else "scenarios"
    torch.set_num_threads(1)
    os.environ["ART_GENERALIST_DEBUG_SYNC"] = "1"
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size,
                            timeout=timedelta(seconds=60))
    if mode == "killed":
        killed_run(out, rank)
        raise SystemExit("the kill did not happen")
    if mode == "after_kill":
        result = fit_run("generalist", True, out, rank, checkpoint_dir=out / "killed", resume=True)
        torch.save(result, out / f"after_kill-rank{rank}.pt")
        dist.barrier()
        dist.destroy_process_group()
        return
    results = {
        "generalist_fit": lambda: fit_run("generalist", True, out, rank, checkpoint_dir=out / "ckpt"),
        "single_fit": lambda: fit_run("pgd", True, out, rank),
        "half": lambda: fit_run("generalist", True, out, rank, checkpoint_dir=out / "half", stop_after=1),
        "resumed": lambda: fit_run("generalist", True, out, rank, checkpoint_dir=out / "half", resume=True),
        "sparse_fit": lambda: fit_run("generalist", False, out, rank, trainer_kw={"sparsity": FlyingBird(
            density=0.5, update_every=3)}),
        "pgd_step": lambda: step_run("pgd", False, shuffle=True),
        "natural_step": lambda: step_run("natural", False, shuffle=True),
        "generalist_step": lambda: step_run("generalist", False, shuffle=True),
        "natural_bn_step": lambda: step_run("natural", True, shuffle=False),
        "errors": errors,
        "evaluation": evaluation,
        "loader": loader_run,
        "sync_check": sync_check,
    }
    for name, run in results.items():
        torch.save(run(), out / f"{name}-rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    from tests._dp_worker import main as imported_main  # functions named as the tests import them (settings)

    imported_main()
