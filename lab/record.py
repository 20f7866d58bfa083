"""What produced a lab result: the ``"record"`` every lab script puts in the JSON it writes.

    from record import run_record        # lab/ is on sys.path when a lab script runs
    result = {..., "record": run_record()}

``package_version`` is the imported package's ``art_generalist.__version__`` (the source that ran);
``importlib.metadata.version("art-generalist")`` is used only when the package has no
``__version__``. An editable install keeps the version of the ``pip install -e`` that made it, so
the two can disagree (results written before ``record`` existed say 0.1.0 for that reason): then
the source's version is recorded and ``package_version_note`` says what the metadata says.
``git_commit`` is ``git rev-parse HEAD`` of the checkout the package runs from, with ``-dirty`` when
tracked files differ from it (untracked files, such as a run's own outputs, do not count), and
``None`` outside a git checkout or without git.
"""
from __future__ import annotations

import importlib.metadata
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

REPO_ROOT = Path(__file__).resolve().parents[1]
DISTRIBUTION = "art-generalist"


def git_commit() -> Optional[str]:
    """``HEAD`` of the checkout, ``-dirty`` appended when tracked files have uncommitted changes
    (the package's own :func:`art_generalist._version.source_commit`)."""
    from art_generalist._version import source_commit

    return source_commit()


def package_version() -> dict[str, Any]:
    """``package_version``, where it was read (``package_version_from``) and, when the installed
    metadata and the source disagree or the package was imported from outside this checkout,
    ``package_version_note``."""
    try:
        installed: Optional[str] = importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        installed = None
    try:
        import art_generalist

        source = getattr(art_generalist, "__version__", None)
        location = Path(art_generalist.__file__).resolve().parent
    except Exception:  # a broken package still gets its run recorded
        source, location = None, None
    notes = []
    if source is not None:
        out: dict[str, Any] = {"package_version": source, "package_version_from": "art_generalist.__version__"}
        if installed is None:
            notes.append(f"no installed {DISTRIBUTION} distribution metadata")
        elif installed != source:
            notes.append(f"installed metadata (importlib.metadata) says {installed}; the source's __version__ "
                         f"{source} is recorded (a stale editable install)")
    else:
        out = {"package_version": installed, "package_version_from": "importlib.metadata"}
        notes.append("art_generalist has no importable __version__")
    if location is not None and REPO_ROOT not in location.parents:
        notes.append(f"art_generalist was imported from {location}, outside this checkout ({REPO_ROOT})")
    if notes:
        out["package_version_note"] = "; ".join(notes)
    return out


def _torch_version() -> Optional[str]:
    try:
        import torch
    except ImportError:
        return None
    return str(torch.__version__)


def run_record() -> dict[str, Any]:
    """The record of this run: package version, commit, command line, torch version and time."""
    return {**package_version(), "git_commit": git_commit(),
            "command": shlex.join([sys.executable, *sys.argv]), "torch": _torch_version(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}


if __name__ == "__main__":
    import json

    print(json.dumps(run_record(), indent=2))
