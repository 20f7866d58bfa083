"""The package's shape: no import cycles, small modules, old import paths still working."""
from __future__ import annotations

import ast
import importlib
import warnings
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "art_generalist"


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).replace(".__init__", ""): p
            for p in PACKAGE.rglob("*.py")}


def _imports(path: Path, name: str) -> set[str]:
    """art_generalist modules imported at module level (not inside functions or TYPE_CHECKING)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("art_generalist"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("art_generalist"))
    return found


def test_no_import_cycles():
    modules = _modules()
    graph = {m: {i for i in _imports(p, m) if i in modules and i != m} for m, p in modules.items()}
    # a package's __init__ importing its own submodules is not a cycle through them
    graph = {m: {i for i in deps if not (m.startswith(i + ".") or i == "art_generalist")} for m, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for dep in graph[m]:
            if state.get(dep) == 1:
                pytest.fail(f"import cycle: {' -> '.join(stack + [m, dep])}")
            if dep not in state:
                visit(dep, stack + [m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])


def test_no_module_over_300_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 300}
    assert not long


@pytest.mark.parametrize("old, new, name", [
    ("art_generalist.trainer", "art_generalist.trainers.generalist", "GeneralistTrainer"),
    ("art_generalist.baselines", "art_generalist.trainers.single", "AdversarialTrainerTensor"),
    ("art_generalist.base_trainer", "art_generalist.trainers.base", "TensorTrainer"),
    ("art_generalist.checkpoint", "art_generalist.state.files", "safe_load"),
    ("art_generalist.persistence", "art_generalist.state.trainer_state", "list_checkpoints"),
    ("art_generalist.export", "art_generalist.state.export", "load_exported"),
    ("art_generalist.benchmark.art_baselines", "art_generalist.benchmark.art_runner", "ARTTrainerRun"),
])
def test_old_module_paths_import_with_a_deprecation_warning(old, new, name):
    import sys

    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=new.replace(".", r"\.")):
        module = importlib.import_module(old)
    assert getattr(module, name) is getattr(importlib.import_module(new), name)


def test_old_trainer_name_warns_and_reads_new_checkpoints(digits, tmp_path):
    from art_generalist import AdversarialTrainerTensor, SingleLearnerTrainer
    from tests.conftest import make_classifier, state_equal

    fast = dict(eps=0.1, eps_step=0.025, max_iter=2, verbose=False, val_max_iter=0)
    trainer = SingleLearnerTrainer(make_classifier(), **fast)
    trainer.fit(digits.x_train[:64], digits.y_train[:64], nb_epochs=1, batch_size=32)
    trainer.save_checkpoint(tmp_path / "c.pt")
    with pytest.warns(DeprecationWarning, match="SingleLearnerTrainer"):
        old = AdversarialTrainerTensor(make_classifier(), **fast)
    assert isinstance(old, SingleLearnerTrainer)
    old.load_checkpoint(tmp_path / "c.pt")
    assert state_equal(old.get_classifier().model, trainer.get_classifier().model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SingleLearnerTrainer(make_classifier(), **fast)  # the new name is silent
