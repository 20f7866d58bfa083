"""The package's version (the one source setup.py reads too) and the commit of a source checkout."""
from __future__ import annotations

import functools
import subprocess
from pathlib import Path
from typing import Optional

__version__ = "0.3.0"


@functools.lru_cache(maxsize=1)
def source_commit() -> Optional[str]:
    """The git commit of the checkout the package is imported from (``-dirty`` when tracked files
    differ from it); ``None`` for an installed copy or without git."""
    here = Path(__file__).resolve().parent
    if not (here.parent / ".git").exists():
        return None
    try:
        run = functools.partial(subprocess.run, cwd=here.parent, capture_output=True, text=True, timeout=10)
        commit = run(["git", "rev-parse", "HEAD"]).stdout.strip()
        dirty = run(["git", "status", "--porcelain", "--untracked-files=no"]).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (commit + ("-dirty" if dirty else "")) or None
