"""Subprocess worker: one gloo rank of the tests that ranks start and stay in step (tests/test_distributed.py).

    python tests/_dp_sync_worker.py RANK WORLD_SIZE PORT OUT_DIR [sync | timeout]

``sync`` runs every scenario of :func:`main` and saves ``OUT_DIR/<scenario>-rank<RANK>.pt`` after
each (a scenario that raises records its error instead, so one failure does not hide the others);
``timeout`` joins the group with :func:`art_generalist.parallel.ranks.init_from_env` as under
``torchrun`` and rank 1 never joins rank 0's collective.
"""
from __future__ import annotations

import copy
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from art_generalist import GeneralistTrainer  # noqa: E402
from art_generalist.data import load_dataset  # noqa: E402
from art_generalist.sparse import RobustBird  # noqa: E402
from tests._dp_worker import FAST, augment, build  # noqa: E402
from tests.conftest import make_classifier, tiny_net  # noqa: E402


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def seeded_apart() -> dict:
    """Each rank seeded differently (as for augmentation) builds its own initial weights and takes
    one optimizer step on random gradients of its own (momentum buffers); then ``fit``."""
    data, rank = load_dataset("digits"), _rank()
    torch.manual_seed(100 + rank)
    trainer = GeneralistTrainer(make_classifier(tiny_net(rank)), **FAST)
    for lrn in trainer.learners:
        for p in lrn.model.parameters():
            p.grad = torch.randn_like(p)
        lrn.optimizer.step()
        lrn.optimizer.zero_grad(set_to_none=True)
    initial = copy.deepcopy(trainer.state_dict()["models"])
    error = None
    try:
        trainer.fit(data.x_train[:64], data.y_train[:64], nb_epochs=1, batch_size=32)
    except RuntimeError as err:  # the debug sync check: the ranks trained different models
        error = str(err)
    return {"initial": initial, "models": trainer.state_dict()["models"], "error": error}


def single_ema() -> dict:
    """PGD-AT shipping an EMA of its weights, each rank seeded apart, 2 epochs (no BatchNorm: each rank
    normalises its own slice, so only a model without it equals one process exactly)."""
    from art_generalist import SingleLearnerTrainer

    data, rank = load_dataset("digits"), _rank()
    torch.manual_seed(200 + rank)
    trainer = SingleLearnerTrainer(make_classifier(tiny_net(rank)), ema_decay=0.8, **FAST)
    trainer.fit(data.x_train[:64], data.y_train[:64], nb_epochs=2, batch_size=32)
    return {"models": trainer.state_dict()["models"], "updates": trainer.average.num_updates}


def robust_bird(threshold: float = 0.08) -> dict:
    """Robust Bird (a 3-epoch dense search at most, window 2) then one adversarial epoch."""
    data = load_dataset("digits")
    torch.manual_seed(0)
    bird = RobustBird(density=0.5, threshold=threshold, window=2, max_search_epochs=3)
    trainer = build("pgd", False, augment=augment, sparsity=bird)
    error = None
    try:
        trainer.fit(data.x_train[:128], data.y_train[:128], nb_epochs=1, batch_size=32)
    except RuntimeError as err:
        error = str(err)
    return {"models": trainer.state_dict()["models"], "plugins": trainer.plugins.state_dict(), "error": error}


def robust_bird_stop() -> dict:
    """Ranks that would stop the search at different epochs: rank 0 at epoch 2 (threshold 1: any
    distance passes), rank 1 never (its early-bird test always fails) but at the budget of 3."""
    from art_generalist.sparse import robust_bird as module

    test = module.early_bird_emerged
    if _rank() == 1:
        module.early_bird_emerged = lambda *args, **kwargs: False
    try:
        return robust_bird(threshold=1.0)
    finally:
        module.early_bird_emerged = test


def timeout(rank: int, size: int, port: str, out: Path) -> None:
    """Rank 0 waits in a collective that rank 1 never joins; rank 1 stays alive meanwhile (up to
    15 s, until rank 0 reports) so that only a timeout can end rank 0's wait early."""
    from art_generalist.parallel.ranks import init_from_env

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK=str(rank), WORLD_SIZE=str(size),
                      LOCAL_RANK=str(rank))
    init_from_env("cpu")  # the timeout: $ART_GENERALIST_COLLECTIVE_TIMEOUT, set by the test
    report = out / "timeout-rank0.pt"
    if rank == 0:
        start, error = time.monotonic(), None
        try:
            dist.all_reduce(torch.ones(1))
        except Exception as err:  # noqa: BLE001 - whatever the backend raises
            error = f"{type(err).__name__}: {err}"
        torch.save({"error": error, "seconds": time.monotonic() - start}, report)
    else:
        deadline = time.monotonic() + 15
        while not report.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    os._exit(0)  # no clean-up: the group is broken


def main() -> None:
    rank, size, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
    mode = sys.argv[5] if len(sys.argv) > 5 else "sync"
    torch.set_num_threads(1)
    if mode == "timeout":
        timeout(rank, size, port, out)
    os.environ["ART_GENERALIST_DEBUG_SYNC"] = "1"
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size,
                            timeout=timedelta(seconds=60))
    scenarios = {
        "seeded_apart": seeded_apart,
        "single_ema": single_ema,
        "robust_bird": robust_bird,
        "robust_bird_stop": robust_bird_stop,
    }
    for name, run in scenarios.items():
        torch.save(run(), out / f"{name}-rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    from tests._dp_sync_worker import main as imported_main  # functions named as the tests import them

    imported_main()
