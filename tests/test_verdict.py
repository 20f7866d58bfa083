"""The README's opening table is the one lab/verdict.py builds from the committed results."""
from __future__ import annotations

import importlib.util

import pytest

from tests.conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "lab" / "verdict.py"


@pytest.fixture(scope="module")
def verdict():
    if not (REPO_ROOT / "lab" / "results").is_dir():  # an sdist ships the lab scripts, not their results
        pytest.skip("lab/results is not in this tree")
    spec = importlib.util.spec_from_file_location("verdict", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_opening_table_is_generated_from_the_results(verdict):
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert verdict.readme_table(readme) == verdict.table(), "regenerate it: python lab/verdict.py --write"
    assert readme.index(verdict.START) < readme.index("## Set-up")  # a newcomer reads it first


def test_every_cell_is_a_paired_difference_of_reports_evaluated_alike(verdict):
    table = verdict.table()
    rows = table.splitlines()[3:]
    assert len(rows) == len(verdict.ROWS) - 1
    for key, (_, files) in verdict.DATASETS.items():
        found = verdict.reports(files)
        reference = found["art_madry"]
        for _, methods in verdict.ROWS:
            if methods.get(key) in found:  # raises when the points, attacks or seed differ
                verdict.compare_reports(found[methods[key]], reference)
    with pytest.raises(ValueError, match="not evaluated the same way"):
        found = verdict.reports(verdict.DATASETS["digits"][1])
        other = verdict.reports(verdict.DATASETS["fmnist"][1])
        verdict.compare_reports(found["art_madry"], other["art_madry"])
