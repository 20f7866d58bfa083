"""Data sets as numpy arrays for ART: ``x`` float32 in [0, 1], NCHW; ``y`` int64 class indices.

``digits`` (scikit-learn's 8×8 digits) ships with scikit-learn and needs no files. The other sets
are read by torchvision's own dataset classes from the data root: the ``root`` argument, else the
``ART_GENERALIST_DATA`` environment variable, else ``~/.cache/art_generalist``. Nothing is
downloaded unless ``download=True``; a missing set raises :class:`FileNotFoundError`.

Layout under the root (torchvision's): ``MNIST/raw/``, ``FashionMNIST/raw/``,
``cifar-10-batches-py/``, ``cifar-100-python/`` and ``svhn/{train,test}_32x32.mat``.

CIFAR-10/100 integrity: torchvision verifies the md5 of every batch file (and of the meta file)
against the official values on each load. This module keeps that check and offers no way around
it; a set that fails it is reported like a missing one (torchvision says "not found or
corrupted"). The tests exercise this same code path on tiny generated batch files by replacing
only ``torchvision.datasets.cifar.check_integrity`` with an existence check.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["DATASETS", "DATA_ENV_VAR", "Dataset", "DatasetInfo", "data_root", "load_dataset"]

DATA_ENV_VAR = "ART_GENERALIST_DATA"
_DEFAULT_ROOT = "~/.cache/art_generalist"


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a data set: shape (C, H, W), classes, channel mean/std, usual L∞ ε."""

    name: str
    input_shape: tuple[int, int, int]
    nb_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    eps: float
    eps_step: float


_RGB32 = (3, 32, 32)
_EPS8 = (8 / 255, 2 / 255)  # (eps, eps_step) for the 32x32 colour sets
DATASETS: dict[str, DatasetInfo] = {
    # digits mean/std: over all 1797 images scaled to [0, 1] (0.30526, 0.37605).
    "digits": DatasetInfo("digits", (1, 8, 8), 10, (0.3053,), (0.3760,), 0.1, 0.025),
    "mnist": DatasetInfo("mnist", (1, 28, 28), 10, (0.1307,), (0.3081,), 0.3, 0.01),
    "fashion_mnist": DatasetInfo("fashion_mnist", (1, 28, 28), 10, (0.2860,), (0.3530,), 0.1, 0.01),
    "cifar10": DatasetInfo("cifar10", _RGB32, 10, (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616), *_EPS8),
    "cifar100": DatasetInfo("cifar100", _RGB32, 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), *_EPS8),
    "svhn": DatasetInfo("svhn", _RGB32, 10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), *_EPS8),
}


@dataclass(frozen=True, eq=False)
class Dataset:
    """A loaded data set. ``eq=False``: instances compare by identity; arrays are left out of the repr."""

    name: str
    x_train: np.ndarray = field(repr=False)
    y_train: np.ndarray = field(repr=False)
    x_test: np.ndarray = field(repr=False)
    y_test: np.ndarray = field(repr=False)
    input_shape: tuple[int, int, int]
    nb_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    eps: float
    eps_step: float
    clip_values: tuple[float, float] = (0.0, 1.0)


def data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The data root: ``root``, else ``$ART_GENERALIST_DATA``, else ``~/.cache/art_generalist``."""
    if root is None:
        root = os.environ.get(DATA_ENV_VAR) or _DEFAULT_ROOT
    return Path(root).expanduser()


_Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _load_digits(rng: np.random.Generator) -> _Arrays:
    """sklearn digits (raw values 0..16) with a stratified, seeded 80/20 train/test split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.images[:, None]
    y = bunch.target.astype(np.int64)
    test_idx = []
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        test_idx.append(members[: int(round(0.2 * len(members)))])
    is_test = np.zeros(len(y), dtype=bool)
    is_test[np.concatenate(test_idx)] = True
    return x[~is_test], y[~is_test], x[is_test], y[is_test]


def _read_torchvision(name: str, root: Path, train: bool, download: bool) -> tuple[np.ndarray, np.ndarray]:
    """Raw uint8 NCHW images and int64 labels through torchvision's dataset class."""
    import torchvision.datasets as tvd

    if name in ("mnist", "fashion_mnist"):
        cls = tvd.MNIST if name == "mnist" else tvd.FashionMNIST
        ds = cls(str(root), train=train, download=download)
        return ds.data.numpy()[:, None], ds.targets.numpy().astype(np.int64)
    if name in ("cifar10", "cifar100"):
        cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
        ds = cls(str(root), train=train, download=download)
        return np.asarray(ds.data).transpose(0, 3, 1, 2), np.asarray(ds.targets, dtype=np.int64)
    if name == "svhn":
        ds = tvd.SVHN(str(root), split="train" if train else "test", download=download)
        return np.asarray(ds.data), np.asarray(ds.labels, dtype=np.int64)
    raise ValueError(f"no torchvision reader for {name!r}")


def _load_torchvision(name: str, root: Path, download: bool) -> _Arrays:
    """Train and test splits; a missing set (without ``download``) raises FileNotFoundError."""
    folder = root / "svhn" if name == "svhn" else root
    try:
        x_train, y_train = _read_torchvision(name, folder, True, download)
        x_test, y_test = _read_torchvision(name, folder, False, download)
    except RuntimeError as err:
        if download:
            raise
        raise FileNotFoundError(
            f"data set {name!r} not found under {folder} (torchvision: {err}). "
            f"Pass download=True to fetch it, or set {DATA_ENV_VAR} to the folder that holds it."
        ) from err
    return x_train, y_train, x_test, y_test


def _subset(
    x: np.ndarray, y: np.ndarray, n: int | None, rng: np.random.Generator, split: str
) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random subset of ``n`` items (original order kept); all of them when ``n`` is None."""
    if n is None:
        return x, y
    if not 1 <= n <= len(y):
        raise ValueError(f"n_{split}={n} is out of range: the {split} split has {len(y)} items")
    idx = np.sort(rng.choice(len(y), size=n, replace=False))
    return x[idx], y[idx]


def load_dataset(
    name: str,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    n_train: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
    cap_test: bool = False,
) -> Dataset:
    """Load ``name`` (one of :data:`DATASETS`) as float32 NCHW arrays in [0, 1].

    Args:
        name: data set name, e.g. ``"mnist"`` (``"fashion-mnist"`` is accepted too).
        root: data root; see :func:`data_root`. Unused for ``digits``.
        download: let torchvision download a missing set into the root.
        n_train: keep a seeded random subset of this many training items (all if None).
        n_test: same for the test split.
        seed: seeds the subsets (and the digits train/test split).
        cap_test: an ``n_test`` above the test split's size takes the whole split instead of raising.

    Raises:
        ValueError: unknown name, or ``n_train``/``n_test`` out of range.
        FileNotFoundError: a torchvision set is missing (or corrupted) and ``download`` is False.
    """
    key = name.lower().replace("-", "_")
    if key not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; known data sets: {', '.join(sorted(DATASETS))}")
    info = DATASETS[key]
    split_rng, train_rng, test_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    if key == "digits":
        x_train, y_train, x_test, y_test = _load_digits(split_rng)
        scale = 16.0
    else:
        x_train, y_train, x_test, y_test = _load_torchvision(key, data_root(root), download)
        scale = 255.0
    x_train, y_train = _subset(x_train, y_train, n_train, train_rng, "train")
    if cap_test and n_test is not None and n_test > len(y_test):
        n_test = None  # the whole split: the subset of all its items in their order
    x_test, y_test = _subset(x_test, y_test, n_test, test_rng, "test")
    logger.info("loaded %s: %d train / %d test items", key, len(y_train), len(y_test))
    return Dataset(
        name=key,
        x_train=np.asarray(x_train, dtype=np.float32) / np.float32(scale),
        y_train=np.ascontiguousarray(y_train, dtype=np.int64),
        x_test=np.asarray(x_test, dtype=np.float32) / np.float32(scale),
        y_test=np.ascontiguousarray(y_test, dtype=np.int64),
        input_shape=info.input_shape,
        nb_classes=info.nb_classes,
        mean=info.mean,
        std=info.std,
        eps=info.eps,
        eps_step=info.eps_step,
        clip_values=(0.0, 1.0),
    )
