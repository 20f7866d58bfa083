"""Shared pytest fixtures."""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

DATA_ENV_VAR = "ART_GENERALIST_DATA"
REPO_ROOT = Path(__file__).resolve().parents[1]
#: Staged data sets next to the repository (``../shared/data``), used when the env var is unset.
DEFAULT_TEST_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _default_data_env() -> Iterator[None]:
    """Point ``ART_GENERALIST_DATA`` at ``../shared/data`` for the session unless it is set."""
    if os.environ.get(DATA_ENV_VAR):
        yield
        return
    os.environ[DATA_ENV_VAR] = str(DEFAULT_TEST_DATA)
    try:
        yield
    finally:
        os.environ.pop(DATA_ENV_VAR, None)


@pytest.fixture(scope="session")
def art_data_root(_default_data_env: None) -> Path:
    """The data root the tests read staged data sets from."""
    return Path(os.environ[DATA_ENV_VAR]).expanduser()
