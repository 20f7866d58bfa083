"""Tests for art_generalist.data (digits offline, staged MNIST/Fashion-MNIST, generated CIFAR/SVHN)."""
from __future__ import annotations

import os
import pickle
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from art_generalist.data import DATA_ENV_VAR, DATASETS, Dataset, data_root, load_dataset

#: torchvision folder and (train, test) sizes of the staged sets.
STAGED = {"mnist": ("MNIST", 60_000, 10_000), "fashion_mnist": ("FashionMNIST", 60_000, 10_000)}


def check_arrays(ds: Dataset) -> None:
    """Shapes, dtypes and ranges every loaded set must satisfy."""
    for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
        assert x.dtype == np.float32 and y.dtype == np.int64
        assert x.shape == (len(y), *ds.input_shape)
        assert x.min() >= 0.0 and x.max() <= 1.0
        assert y.min() >= 0 and y.max() < ds.nb_classes
    info = DATASETS[ds.name]
    assert (ds.input_shape, ds.nb_classes, ds.mean, ds.std) == (info.input_shape, info.nb_classes, info.mean, info.std)
    assert (ds.eps, ds.eps_step, ds.clip_values) == (info.eps, info.eps_step, (0.0, 1.0))


def test_dataset_table() -> None:
    assert set(DATASETS) == {"digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "svhn"}
    for key, info in DATASETS.items():
        assert info.name == key and len(info.mean) == len(info.std) == info.input_shape[0]
        assert 0 < info.eps_step <= info.eps < 1
    assert DATASETS["mnist"].eps == 0.3 and DATASETS["cifar10"].eps == pytest.approx(8 / 255)


def test_digits_offline() -> None:
    ds = load_dataset("digits", root="/nonexistent")
    check_arrays(ds)
    assert len(ds.y_train) + len(ds.y_test) == 1797
    assert ds.x_train.max() == 1.0
    counts = np.bincount(ds.y_test, minlength=10) / np.bincount(np.concatenate([ds.y_train, ds.y_test]))
    np.testing.assert_allclose(counts, 0.2, atol=0.01)  # stratified 80/20
    full = np.concatenate([ds.x_train, ds.x_test]).reshape(1797, -1)
    np.testing.assert_allclose(full.mean(), ds.mean[0], atol=1e-4)
    np.testing.assert_allclose(full.std(), ds.std[0], atol=1e-4)


def test_digits_split_is_seeded() -> None:
    a, b, c = load_dataset("digits", seed=0), load_dataset("digits", seed=0), load_dataset("digits", seed=1)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert a.x_test.shape == c.x_test.shape and not np.array_equal(a.x_test, c.x_test)


def test_subsets() -> None:
    full = load_dataset("digits")
    sub = load_dataset("digits", n_train=100, n_test=30, seed=0)
    again = load_dataset("digits", n_train=100, n_test=30, seed=0)
    check_arrays(sub)
    assert (len(sub.y_train), len(sub.y_test)) == (100, 30)
    np.testing.assert_array_equal(sub.x_train, again.x_train)
    rows = {r.tobytes() for r in full.x_train}
    assert all(r.tobytes() in rows for r in sub.x_train)
    with pytest.raises(ValueError, match="n_train"):
        load_dataset("digits", n_train=10**6)


def test_unknown_dataset() -> None:
    with pytest.raises(ValueError, match=r"unknown data set 'imagenet'.*mnist"):
        load_dataset("imagenet")


def test_data_root_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert data_root(tmp_path) == tmp_path
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path / "env"))
    assert data_root() == tmp_path / "env"
    monkeypatch.delenv(DATA_ENV_VAR)
    assert data_root() == Path("~/.cache/art_generalist").expanduser()


@pytest.mark.parametrize("name", sorted(STAGED))
def test_staged_sets(name: str, art_data_root: Path) -> None:
    folder, n_train, n_test = STAGED[name]
    if not (art_data_root / folder / "raw" / "train-images-idx3-ubyte").is_file():
        pytest.skip(f"{folder} not found under {art_data_root}")
    ds = load_dataset(name)  # root comes from ART_GENERALIST_DATA
    check_arrays(ds)
    assert (len(ds.y_train), len(ds.y_test)) == (n_train, n_test)
    assert ds.x_train.max() == 1.0 and set(np.unique(ds.y_test)) == set(range(10))
    np.testing.assert_allclose(ds.x_train.mean(), ds.mean[0], atol=5e-4)
    sub = load_dataset(name, n_train=500, n_test=200, seed=3)
    assert (len(sub.y_train), len(sub.y_test)) == (500, 200)
    picked = {r.tobytes() for r in sub.x_train}
    assert sum(r.tobytes() in picked for r in ds.x_train) >= 500  # the subset comes from the full split


def test_missing_set_raises(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    root = re.escape(str(tmp_path))
    with pytest.raises(FileNotFoundError, match=rf"'cifar10'.*{root}.*download=True.*{DATA_ENV_VAR}"):
        load_dataset("cifar10", root=tmp_path)
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match=rf"'mnist'.*{root}/empty"):
        load_dataset("mnist")
    with pytest.raises(FileNotFoundError, match=rf"'svhn'.*{root}/empty/svhn"):
        load_dataset("svhn")


def _exists_only(fpath: str, md5: str | None = None) -> bool:
    """Stand-in for torchvision's md5 check: the generated files cannot match the official md5s."""
    return os.path.isfile(fpath)


def _write_pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _images(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)


def write_cifar10(root: Path, n: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Tiny CIFAR-10 in its on-disk format: pickled dicts with a N×3072 uint8 ``data`` (R, G, B planes)
    and ``labels``; returns the expected NCHW uint8 images and labels (train, then test)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    parts = {}
    for fname in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x, y = _images(rng, n), rng.integers(0, 10, n)
        _write_pickle(folder / fname, {"batch_label": fname, "data": x.reshape(n, 3072), "labels": y.tolist()})
        parts[fname] = (x, y)
    _write_pickle(folder / "batches.meta", {"label_names": [f"c{i}" for i in range(10)], "num_vis": 3072})
    train = [parts[f"data_batch_{i}"] for i in range(1, 6)]
    return (np.concatenate([p[0] for p in train]), np.concatenate([p[1] for p in train]), *parts["test_batch"])


def write_cifar100(root: Path, n: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Tiny CIFAR-100 (``train``/``test`` with ``fine_labels``, ``meta`` with ``fine_label_names``)."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    out = []
    for fname in ("train", "test"):
        x, y = _images(rng, n), rng.integers(0, 100, n)
        entry = {"data": x.reshape(n, 3072), "fine_labels": y.tolist(), "coarse_labels": (y // 5).tolist()}
        _write_pickle(folder / fname, entry)
        out += [x, y]
    _write_pickle(folder / "meta", {"fine_label_names": [f"f{i}" for i in range(100)], "coarse_label_names": []})
    return tuple(out)  # type: ignore[return-value]


@pytest.mark.parametrize("name,writer", [("cifar10", write_cifar10), ("cifar100", write_cifar100)])
def test_cifar_from_batch_files(name: str, writer: Callable, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The real torchvision CIFAR reader on generated batch files (only its md5 check is replaced)."""
    import torchvision.datasets.cifar as tv_cifar

    x_train, y_train, x_test, y_test = writer(tmp_path)
    with pytest.raises(FileNotFoundError, match="corrupted"):  # the md5 check is really applied
        load_dataset(name, root=tmp_path)
    monkeypatch.setattr(tv_cifar, "check_integrity", _exists_only)
    ds = load_dataset(name, root=tmp_path)
    check_arrays(ds)
    np.testing.assert_array_equal(ds.x_train, x_train.astype(np.float32) / 255)
    np.testing.assert_array_equal(ds.y_train, y_train)
    np.testing.assert_array_equal(ds.x_test, x_test.astype(np.float32) / 255)
    np.testing.assert_array_equal(ds.y_test, y_test)
    sub = load_dataset(name, root=tmp_path, n_train=4, n_test=2)
    assert sub.x_train.shape == (4, 3, 32, 32) and sub.x_test.shape == (2, 3, 32, 32)


def test_svhn_from_mat_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """SVHN's ``.mat`` files (X: H×W×C×N, y: labels 1..10 with 10 for digit 0) under ``root/svhn``."""
    import scipy.io
    import torchvision.datasets.svhn as tv_svhn

    (tmp_path / "svhn").mkdir()
    rng = np.random.default_rng(2)
    expected = {}
    for split in ("train", "test"):
        x, y = _images(rng, 6), np.array([10, 1, 2, 3, 9, 10])
        scipy.io.savemat(tmp_path / "svhn" / f"{split}_32x32.mat", {"X": x.transpose(2, 3, 1, 0), "y": y[:, None]})
        expected[split] = (x, y % 10)
    monkeypatch.setattr(tv_svhn, "check_integrity", _exists_only)
    ds = load_dataset("svhn", root=tmp_path)
    check_arrays(ds)
    np.testing.assert_array_equal(ds.x_train, expected["train"][0].astype(np.float32) / 255)
    np.testing.assert_array_equal(ds.y_train, expected["train"][1])
    np.testing.assert_array_equal(ds.y_test, expected["test"][1])


def test_cap_test_takes_the_whole_split_instead_of_refusing_a_larger_n_test():
    whole = load_dataset("digits", seed=3)
    capped = load_dataset("digits", seed=3, n_test=5000, cap_test=True)
    assert np.array_equal(capped.y_test, whole.y_test) and np.array_equal(capped.x_test, whole.x_test)
    assert len(load_dataset("digits", seed=3, n_test=50, cap_test=True).y_test) == 50
    with pytest.raises(ValueError, match="out of range"):
        load_dataset("digits", seed=3, n_test=5000)
