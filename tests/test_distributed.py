"""Data-parallel training under torch.distributed: 2 gloo ranks on localhost (tests/_dp_worker.py).

One launch of the two ranks runs every scenario (about 15 s); the tests compare what each rank
saved with each other and with single-process runs in this process.
"""
from __future__ import annotations

import os
import pathlib
import shutil
import socket
import subprocess
import sys
from typing import Optional

import pytest
import torch

from art_generalist.core.attack import TrainingAttack
from art_generalist.core.augment import random_crop_flip
from art_generalist.data import load_dataset
from art_generalist.parallel.draws import Shard, _GlobalDraws
from tests._dp_worker import EVAL_POINTS, alone_evaluation, augment, build, evaluation, trained_classifier
from tests.conftest import tiny_net
from tests.test_checkpoint import _assert_identical, _tensors

WORKER = pathlib.Path(__file__).with_name("_dp_worker.py")
SYNC_WORKER = pathlib.Path(__file__).with_name("_dp_sync_worker.py")
TIMEOUT_S = 120  # the launch takes about 15 s; a hung rank is killed after this


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(out: pathlib.Path, *mode: str, worker: pathlib.Path = WORKER, timeout_s: float = TIMEOUT_S,
            env: Optional[dict] = None) -> tuple[list[int], list[str]]:
    """Run 2 ranks of the worker to the end; (return codes, logs)."""
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, str(worker), str(r), "2", port, str(out), *mode], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})})
             for r in range(2)]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=timeout_s)[0])
    except subprocess.TimeoutExpired:
        pytest.fail(f"a data-parallel rank hung for {timeout_s} s")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [p.returncode for p in procs], logs


def _checkpoints(directory: pathlib.Path) -> list[str]:
    """The checkpoint files in ``directory`` (not the files written beside them, e.g. their hashes)."""
    return sorted(p.name for p in directory.iterdir() if p.suffix == ".pt")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Launch 2 ranks once; returns ``load(scenario) -> [rank 0's result, rank 1's]`` and the output dir."""
    out = tmp_path_factory.mktemp("dp")
    codes, logs = _launch(out)
    if any(codes):
        pytest.fail("a data-parallel rank failed:\n" + "\n".join(log[-3000:] for log in logs))
    return (lambda name: [torch.load(out / f"{name}-rank{r}.pt", weights_only=False) for r in range(2)]), out


@pytest.mark.parametrize("scenario", ["generalist_fit", "single_fit", "resumed", "sparse_fit"])
def test_every_rank_ends_with_bit_identical_weights(ranks, scenario):
    r0, r1 = ranks[0](scenario)
    _assert_identical(r0["models"], r1["models"])
    assert [h["learners"] for h in r0["history"]] == [h["learners"] for h in r1["history"]]


def test_sparse_masks_are_the_same_on_every_rank(ranks):
    """Flying Bird (topology updates every 3 iterations) under 2 ranks: identical masks, weights
    zero where the masks say so, and the debug sync check (plug-in state included) passed."""
    r0, r1 = ranks[0]("sparse_fit")
    _assert_identical(r0["plugins"], r1["plugins"])
    sparsity = next(v for v in r0["plugins"].values() if isinstance(v, dict) and v.get("masks"))
    assert sparsity["updates"] and any(u["pruned"] for u in sparsity["updates"])


def test_each_rank_trains_on_half_of_each_global_batch(ranks):
    for r in ranks[0]("generalist_fit"):  # 128 examples, global batches of 32, 2 epochs, 2 learners
        assert r["seen"] == [16] * 16
        assert [h["examples"] for h in r["history"]] == [128, 128]


def test_rank_zero_alone_writes_the_checkpoints(ranks):
    r0, r1 = ranks[0]("generalist_fit")
    assert r0["saved"] == ["checkpoint-epoch00001.pt", "checkpoint-epoch00002.pt"] and r1["saved"] == []
    assert _checkpoints(ranks[1] / "ckpt") == r0["saved"]


def test_two_ranks_resume_bit_identically_and_one_process_resumes_their_checkpoint(ranks, digits, tmp_path):
    full, resumed = ranks[0]("generalist_fit")[0], ranks[0]("resumed")[0]
    assert [h["epoch"] for h in ranks[0]("half")[0]["history"]] == [1]
    _assert_identical(full["models"], resumed["models"])
    shutil.copytree(ranks[1] / "half", tmp_path / "half")
    trainer = build("generalist", True, augment=augment)
    history = trainer.fit(digits.x_train[:128], digits.y_train[:128], nb_epochs=2, batch_size=32,
                          checkpoint_dir=tmp_path / "half", resume=True)
    assert [h["epoch"] for h in history] == [1, 2] and trainer.progress.epoch == 2


def test_two_ranks_killed_mid_epoch_resume_to_the_uninterrupted_weights(ranks):
    """Both ranks die abruptly (os._exit, as under SIGKILL) in the middle of epoch 2; relaunched
    with resume, they continue from rank 0's epoch-1 checkpoint and end bit-identical to the
    uninterrupted 2-rank run."""
    out = ranks[1]
    codes, logs = _launch(out, "killed")
    assert codes == [137, 137], "\n".join(log[-2000:] for log in logs)
    assert _checkpoints(out / "killed") == ["checkpoint-epoch00001.pt"]
    codes, logs = _launch(out, "after_kill")
    assert codes == [0, 0], "\n".join(log[-2000:] for log in logs)
    full = ranks[0]("generalist_fit")[0]
    for r in range(2):
        resumed = torch.load(out / f"after_kill-rank{r}.pt", weights_only=False)
        assert [h["epoch"] for h in resumed["history"]] == [1, 2]  # epoch 1 restored from the checkpoint
        _assert_identical(full["models"], resumed["models"])


def _max_diff(a: dict, b: dict) -> float:
    fa, fb = _tensors(a), _tensors(b)
    assert fa.keys() == fb.keys()
    return max((fa[k].double() - fb[k].double()).abs().max().item() for k in fa
               if isinstance(fa[k], torch.Tensor) and fa[k].is_floating_point())


@pytest.mark.parametrize("kind", ["pgd", "natural", "generalist"])
def test_one_step_on_two_ranks_equals_one_step_on_the_global_batch(ranks, digits, kind):
    """Without BatchNorm, PGD random start included (drawn per global batch and sliced)."""
    r0, r1 = ranks[0](f"{kind}_step")
    _assert_identical(r0["models"], r1["models"])
    trainer = build(kind, False)
    torch.manual_seed(123)  # rank 0's seed: its RNG state is broadcast to every rank
    trainer.fit(digits.x_train[:64], digits.y_train[:64], nb_epochs=1, batch_size=64, shuffle=True)
    assert _max_diff(trainer.state_dict()["models"], r0["models"]) < 1e-6


def test_one_step_with_batchnorm_equals_the_mean_of_the_per_rank_steps(ranks, digits):
    """With BatchNorm in train mode each rank normalises its half ("ghost" batch norm): the step
    equals the mean of single-process steps on the two halves (running statistics included)."""
    r0, _ = ranks[0]("natural_bn_step")
    halves = []
    for part in (slice(0, 32), slice(32, 64)):  # shuffle=False: rank r holds examples [32r, 32r + 32)
        trainer = build("natural", True)
        trainer.fit(digits.x_train[part], digits.y_train[part], nb_epochs=1, batch_size=32, shuffle=False)
        halves.append(trainer.state_dict()["models"]["global"])
    mean = {k: (v + halves[1][k]) / 2 if v.is_floating_point() else v for k, v in halves[0].items()}
    assert _max_diff(mean, r0["models"]["global"]) < 1e-6


def test_misuse_gets_a_clear_error(ranks):
    for r in ranks[0]("errors"):
        assert "`batch_size`=33" in r["batch_size"] and "world size 2" in r["batch_size"]
        assert "last global batch holds 1 of the 65" in r["last_batch"] and "drop_last=True" in r["last_batch"]
        assert "same data length" in r["length"] and "len(x)=6" in r["length"]
        assert "sync_batchnorm needs the model on CUDA" in r["sync_bn"]


def test_the_debug_sync_check_catches_ranks_out_of_sync(ranks):
    for r in ranks[0]("sync_check"):  # rank 1 nudged one weight by 1e-6
        assert "out of sync" in r["error"] and "ranks [1]" in r["error"]


def _untimed(obj):
    """``obj`` without its wall-clock entries (seconds, timings) and per-rank forward-call counts."""
    if isinstance(obj, dict) and obj.get("name") == "eval_mode":
        return {**obj, "detail": obj["detail"].split(" of ")[0]}  # train-mode calls (summed over ranks)
    if isinstance(obj, dict):
        return {k: _untimed(v) for k, v in obj.items() if k not in ("seconds", "timings", "val_seconds")}
    if isinstance(obj, (list, tuple)):
        return [_untimed(v) for v in obj]
    return obj


def test_sharded_evaluation_and_validation_equal_one_process(ranks):
    """evaluate (PGD with 2 restarts, CW, AutoAttack, all checks) and validation split their attack
    batches across the ranks and gather the single-process report, bit for bit."""
    single = evaluation()
    assert single["report"]["n"] == 120 and 0 < single["report"]["robust_acc"] < single["report"]["clean_acc"]
    for r in ranks[0]("evaluation"):
        assert _untimed(r["report"]) == _untimed(single["report"])
        for got, want in zip(r["flags"], single["flags"]):
            assert got == want if isinstance(want, float) else torch.equal(got, want)
        assert torch.equal(r["after"], single["after"])
        assert _untimed(r["validate"]) == _untimed(single["validate"])
    data = load_dataset("digits")  # rank 0 evaluating alone under `local_only`: no rank waits for another
    alone = alone_evaluation(trained_classifier(), data.x_test[:EVAL_POINTS], data.y_test[:EVAL_POINTS])
    assert _untimed(ranks[0]("evaluation")[0]["alone"]) == _untimed(alone)


def test_fit_loader_with_a_distributed_sampler_trains_on_the_global_batches(ranks):
    """Each rank steps on its 16 examples; a new shuffle each epoch, the ranks' halves disjoint;
    without an attack or BatchNorm the weights equal one process's steps on the global batches."""
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    r0, r1 = ranks[0]("loader")
    _assert_identical(r0["models"], r1["models"])
    assert r0["seen"] == [16] * 8 and [h["examples"] for h in r0["history"]] == [128, 128]
    for epoch in range(2):
        assert sorted(r0["orders"][epoch] + r1["orders"][epoch]) == list(range(128))
    assert r0["orders"][0] != r0["orders"][1]
    data = load_dataset("digits")
    dataset = TensorDataset(torch.as_tensor(data.x_train[:128]), torch.as_tensor(data.y_train[:128]))
    one = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=0)
    trainer = build("natural", False)
    trainer.fit_loader(DataLoader(dataset, batch_size=32, sampler=one), nb_epochs=2)
    assert _max_diff(trainer.state_dict()["models"], r0["models"]) < 1e-5


# -- ranks that start apart, Robust Bird, stalled ranks (tests/_dp_sync_worker.py) --------------------
@pytest.fixture(scope="module")
def synced(tmp_path_factory):
    """Launch 2 ranks of the sync worker once; ``load(scenario) -> [rank 0's result, rank 1's]``.
    A rank that fails is reported by the tests that need its results."""
    out = tmp_path_factory.mktemp("dp_sync")
    codes, logs = _launch(out, "sync", worker=SYNC_WORKER)

    def load(name: str) -> list:
        files = [out / f"{name}-rank{r}.pt" for r in range(2)]
        if not all(f.exists() for f in files):
            pytest.fail(f"no result for {name} (return codes {codes}):\n" + "\n".join(log[-3000:] for log in logs))
        return [torch.load(f, weights_only=False) for f in files]
    return load


def test_ranks_seeded_apart_train_rank_zeros_model_from_its_initial_state(synced):
    """Point 7: each rank builds its own initial weights and momentum buffers (seeded apart); when
    fit starts every rank takes rank 0's weights, optimizer, EMAs and RNG, as torch's DDP does at
    construction: the ranks end identical, equal to one process run from rank 0's initial state."""
    from tests._dp_sync_worker import seeded_apart

    r0, r1 = synced("seeded_apart")
    assert _max_diff(r0["initial"], r1["initial"]) > 0.1  # the ranks did start apart
    assert r0["error"] is None and r1["error"] is None, r0["error"] or r1["error"]
    _assert_identical(r0["models"], r1["models"])
    single = seeded_apart()  # one process, rank 0's seeds
    assert _max_diff(single["initial"], r0["initial"]) == 0
    assert _max_diff(single["models"], r0["models"]) < 1e-5


def test_two_ranks_agree_on_the_weight_averaged_single_learner(synced):
    """The averaged model, the learner it averages and the optimizer agree bit for bit across the
    ranks (started apart), and equal one process on the global batches."""
    from tests._dp_sync_worker import single_ema

    r0, r1 = synced("single_ema")
    _assert_identical(r0["models"], r1["models"])
    assert r0["updates"] == r1["updates"] == 4
    assert _max_diff(single_ema()["models"], r0["models"]) < 1e-5


def _stage1(result: dict) -> dict:
    return next(v for v in result["plugins"].values() if isinstance(v, dict) and "stage1" in v)


def test_robust_bird_searches_data_parallel_like_one_process(synced):
    """Point 8: Robust Bird's dense search averages its gradients across the ranks (each trains on
    its half of every global batch), so masks, stop epoch and weights agree across the ranks and
    equal the single-process run on the global batches."""
    from tests._dp_sync_worker import robust_bird

    r0, r1 = synced("robust_bird")
    assert r0["error"] is None and r1["error"] is None, r0["error"] or r1["error"]
    _assert_identical(r0["models"], r1["models"])
    _assert_identical(_untimed(r0["plugins"]), _untimed(r1["plugins"]))  # masks, stop epoch, distances
    single = robust_bird()
    s0, one = _stage1(r0), _stage1(single)
    assert s0["stage1"]["epochs"] == one["stage1"]["epochs"] and s0["stage1"]["emerged"] == one["stage1"]["emerged"]
    assert s0["stage1"]["examples"] == one["stage1"]["examples"] == 128 * s0["stage1"]["epochs"]
    assert all(torch.equal(s0["masks"][k], one["masks"][k]) for k in one["masks"])
    assert _max_diff(single["models"], r0["models"]) < 1e-5


def test_robust_bird_ranks_follow_rank_zeros_stop_decision(synced):
    """Point 8: rank 0 stops the search at epoch 2, rank 1 on its own would search all 3 epochs:
    both stop where rank 0 decides and end with the same weights and masks."""
    r0, r1 = synced("robust_bird_stop")
    assert r0["error"] is None and r1["error"] is None, r0["error"] or r1["error"]
    for r in (r0, r1):
        assert _stage1(r)["stage1"]["epochs"] == 2 and _stage1(r)["stage1"]["emerged"]
    _assert_identical(r0["models"], r1["models"])
    assert all(torch.equal(_stage1(r0)["masks"][k], _stage1(r1)["masks"][k]) for k in _stage1(r0)["masks"])


def test_a_stalled_rank_makes_the_others_fail_after_the_collective_timeout(tmp_path):
    """Point 13a: with ART_GENERALIST_COLLECTIVE_TIMEOUT=5, rank 0 waiting in a collective that
    rank 1 never joins raises after about 5 s instead of waiting (torch's default: 30 minutes)."""
    codes, logs = _launch(tmp_path, "timeout", worker=SYNC_WORKER, timeout_s=60,
                          env={"ART_GENERALIST_COLLECTIVE_TIMEOUT": "5"})
    assert (tmp_path / "timeout-rank0.pt").exists(), "\n".join(log[-2000:] for log in logs)
    report = torch.load(tmp_path / "timeout-rank0.pt", weights_only=False)
    assert report["error"] is not None and "timed out" in report["error"].lower(), report
    assert 4 < report["seconds"] < 12, report


class _Joined(Exception):
    pass


@pytest.mark.parametrize("arg, env, seconds", [(5, None, 5.0), (None, "7.5", 7.5), (2.5, "7.5", 2.5),
                                               (None, None, None)])
def test_the_collective_timeout_reaches_the_process_group(monkeypatch, arg, env, seconds):
    """Point 13a: ``init_from_env(device, timeout_s=...)`` (else the environment variable, else
    torch's default) is the process group's ``timeout``."""
    import datetime

    import torch.distributed as dist

    from art_generalist.parallel.ranks import init_from_env

    seen = {}

    def fake_init(backend, **kwargs):
        seen.update(backend=backend, **kwargs)
        raise _Joined  # the test process joins no group

    monkeypatch.setattr(dist, "init_process_group", fake_init)
    monkeypatch.setenv("WORLD_SIZE", "2")
    if env is None:
        monkeypatch.delenv("ART_GENERALIST_COLLECTIVE_TIMEOUT", raising=False)
    else:
        monkeypatch.setenv("ART_GENERALIST_COLLECTIVE_TIMEOUT", env)
    with pytest.raises(_Joined):
        init_from_env("cpu", **({} if arg is None else {"timeout_s": arg}))
    assert seen["backend"] == "gloo"
    assert seen.get("timeout") == (None if seconds is None else datetime.timedelta(seconds=seconds))


@pytest.mark.parametrize("arg, env, named", [(0, None, "timeout_s"), (-1.0, None, "timeout_s"),
                                             (float("nan"), None, "timeout_s"), (float("inf"), None, "timeout_s"),
                                             (None, "0", "ART_GENERALIST_COLLECTIVE_TIMEOUT"),
                                             (None, "soon", "ART_GENERALIST_COLLECTIVE_TIMEOUT")])
def test_a_non_positive_collective_timeout_is_refused(monkeypatch, arg, env, named):
    """Refused with the option named, before any process group is joined (torchrun or not)."""
    from art_generalist.parallel.ranks import init_from_env

    monkeypatch.setenv("WORLD_SIZE", "1")
    if env is not None:
        monkeypatch.setenv("ART_GENERALIST_COLLECTIVE_TIMEOUT", env)
    with pytest.raises(ValueError, match=named):
        init_from_env("cpu", **({} if arg is None else {"timeout_s": arg}))


# -- single process: the global-batch draws ---------------------------------------------------------
def test_slice_draws_equal_the_global_batch_draws():
    """A rank's augmentation and PGD random start equal the slice of the single-process draws,
    and consume the RNG as one process does."""
    torch.manual_seed(0)
    u, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    model = tiny_net(0).eval()
    from art_generalist.core.attack import InputSpace
    space = InputSpace(model, (0.0, 1.0), 0.0, 1.0)
    attacks = {norm_loss: TrainingAttack(space, norm_loss[0], 0.1, 0.025, 2, loss=norm_loss[1])
               for norm_loss in [("inf", "ce"), (2, "ce"), ("inf", "kl")]}
    fns = {"augment": lambda v, _: random_crop_flip(v, padding=1), **attacks}
    for name, fn in fns.items():
        torch.manual_seed(1)
        full = fn(u, y)
        after_full = torch.get_rng_state()
        torch.manual_seed(1)
        with _GlobalDraws(Shard(8, 4, 8)):
            part = fn(u[4:], y[4:])
        assert torch.allclose(part, full[4:], atol=1e-6), name
        assert torch.equal(torch.get_rng_state(), after_full), name


def test_the_cli_trains_under_torchrun_like_one_process(tmp_path):
    """`torchrun --nproc_per_node=2 -m art_generalist train ...`: rank 0 alone prints and writes,
    and the exported model equals the single-process one (no BatchNorm ghost effects in digits_net)."""
    from safetensors.torch import load_file

    from art_generalist.cli import main

    args = ["train", "--dataset", "digits", "--epochs", "2", "--n-train", "256", "--n-val", "64", "--batch-size",
            "32", "--max-iter", "2", "--threads", "1", "--quiet"]
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
              "-m", "art_generalist", *args, "--out", str(tmp_path / "two")]
    done = subprocess.run(launch, capture_output=True, text=True, timeout=TIMEOUT_S, env={**os.environ,
                          "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.stdout.count("trained generalist on digits for 2 epochs") == 1
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    two, one = load_file(tmp_path / "two" / "model.safetensors"), load_file(tmp_path / "one" / "model.safetensors")
    assert two.keys() == one.keys()
    assert max((two[k].double() - one[k].double()).abs().max().item() for k in one) < 1e-5
    assert _checkpoints(tmp_path / "two" / "checkpoints") == [
        "checkpoint-epoch00001.pt", "checkpoint-epoch00002.pt"]


def test_the_benchmark_under_torchrun_reports_what_one_process_reports(tmp_path):
    """`torchrun -m art_generalist benchmark`: Generalist trains data-parallel, ART Madry on every rank
    (rank 0's weights broadcast), the evaluation is sharded; rank 0 alone writes; the same table."""
    from art_generalist.cli import main

    args = ["benchmark", "--epochs", "5", "--n-train", "512", "--n-val", "64", "--n-eval", "40", "--max-iter", "2",
            "--aa-version", "apgd-ce", "--pgd-steps", "3", "--batch-size", "64", "--methods", "generalist,art_madry",
            "--quiet", "--threads", "1", "--no-base-learners"]
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
              "-m", "art_generalist", *args, "--out", str(tmp_path / "two")]
    done = subprocess.run(launch, capture_output=True, text=True, timeout=2 * TIMEOUT_S,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.stdout.count("wrote ") == 1
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    import json
    two, one = (json.loads((tmp_path / d / "results.json").read_text())["rows"] for d in ("two", "one"))
    keys = ("method", "clean", "pgd", "autoattack", "worst_case", "reliable")
    assert [{k: r[k] for k in keys} for r in two] == [{k: r[k] for k in keys} for r in one]
    assert one[0]["clean"] > 0.3  # trained, so the comparison means something
