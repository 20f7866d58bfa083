"""What PyPI shows and what the sdist carries."""
from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import REPO_ROOT


def _long_description() -> str:
    return subprocess.run([sys.executable, "setup.py", "--long-description"], cwd=REPO_ROOT, check=True,
                          capture_output=True, text=True).stdout


def test_the_long_description_has_no_link_that_is_dead_on_pypi():
    text = _long_description()
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert links, "the README's links went missing"
    assert [link for link in links if not link.startswith(("https://", "http://", "#"))] == []
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert "[BENCHMARKS.md](BENCHMARKS.md)" in readme and "`BENCHMARKS.md` (in the source distribution)" in text


def test_the_use_block_runs_from_any_directory():
    """No path of this repository's neighbourhood (../shared) in what a PyPI reader copies."""
    use = _long_description().split("## Use", 1)[1].split("\n## ", 1)[0]
    assert "../shared" not in use and "download=True" in use


def test_the_sdist_carries_the_whole_test_tree():
    manifest = (REPO_ROOT / "MANIFEST.in").read_text(encoding="utf-8")
    assert "graft tests" in manifest and "pytest.ini" in manifest
