"""The package's floor plan: rooms along the data flow, no import up a level or in a circle."""
from __future__ import annotations

import ast
import warnings
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "art_generalist"


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).replace(".__init__", ""): p
            for p in PACKAGE.rglob("*.py")}


#: The rooms of the package, bottom to top: a module imports only modules of its own room or of
#: a room on a lower level (the data flow of the README's layout section).
LEVELS = {
    "core": 0, "parallel": 0, "models": 0, "data": 0, "_version": 0,  # tensors, ranks, architectures, data
    "estimators": 1,  # the ART glue
    "state": 2,  # files: checkpoints, hashes, exports
    "train": 3,  # the loop, plug-in hooks, data-parallel, validation, checkpoints of a trainer
    "evaluation": 4, "sparse": 4,  # honest evaluation; the sparse-training plug-ins
    "methods": 5,  # Generalist and the single-learner methods
    "transfer": 6, "benchmark": 7, "cli": 8, "__main__": 9,
    "": 10,  # the package's own __init__: the public names
}


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(path: Path, name: str) -> set[str]:
    """art_generalist modules imported anywhere in the file: at module level, inside functions
    and under ``TYPE_CHECKING`` alike (``from art_generalist import x`` counts as the submodule
    ``x`` when it is one, as the package itself otherwise)."""
    modules = _modules()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("art_generalist"):
            subs = {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules}
            found |= subs
            if len(subs) < len(node.names):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("art_generalist"))
    found.discard(name)
    return found


def test_every_module_is_in_a_room():
    assert not sorted(m for m in _modules() if _room(m) not in LEVELS)


def test_no_import_runs_up_a_level():
    up = [f"{m} -> {i}" for m, p in _modules().items() for i in _imports(p, m)
          if i in _modules() and _room(i) != _room(m) and not LEVELS[_room(i)] < LEVELS[_room(m)]]
    assert not up


def test_no_import_cycles():
    modules = _modules()
    graph = {m: {i for i in _imports(p, m) if i in modules} for m, p in modules.items()}
    # a package's __init__ importing its own submodules is not a cycle through them
    graph = {m: {i for i in deps if not i.startswith(m + ".") and not m.startswith(i + ".")}
             for m, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for dep in sorted(graph[m]):
            if state.get(dep) == 1:
                pytest.fail(f"import cycle: {' -> '.join(stack + [m, dep])}")
            if dep not in state:
                visit(dep, stack + [m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


def test_no_root_module_shares_its_name_with_a_deeper_one():
    root = {p.stem for p in PACKAGE.glob("*.py")} | {p.name for p in PACKAGE.iterdir() if p.is_dir()}
    deeper = {p.stem for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE and p.stem != "__init__"}
    assert not (root - {"__init__", "__main__", "__pycache__"}) & deeper


def test_module_sizes_stay_readable():
    """A soft note rather than a cap: a module over 300 lines must say why in this list."""
    allowed = {"methods/generalist.py": "the Generalist method, top to bottom, in one file"}
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 300}
    assert set(long) <= set(allowed), long


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
