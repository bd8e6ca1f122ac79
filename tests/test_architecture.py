"""The one-way architecture (docs/architecture.md): every import points down the layers, inference
never imports training, each rule is defined once, and no module grows past one sitting."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "xmask"

LAYERS: dict[str, int] = {
    "xmask": 1,
    "xmask.types": 1,
    "xmask.errors": 1,
    "xmask.device": 1,
    "xmask.geometry": 2,
    "xmask.data": 3,
    "xmask.models": 3,
    "xmask.losses": 3,
    "xmask.metrics": 3,
    "xmask.segment": 4,
    "xmask.annotate": 5,
    "xmask.inference": 6,
    "xmask.evaluation": 7,
    "xmask.train": 8,
    "xmask.apps": 9,
    "xmask.cli": 10,
    "xmask.__main__": 10,
}
"""Layer of each part (docs/architecture.md); a module may import its own part or lower layers.
Training sits above evaluation (it validates and evaluates its runs), the apps above both."""

NEVER_TRAIN = ("xmask.inference", "xmask.segment", "xmask.evaluation", "xmask.apps")


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def part_of(module: str) -> str:
    """The layer entry a module belongs to (longest matching prefix)."""
    candidates = [p for p in LAYERS if module == p or module.startswith(p + ".")]
    return max(candidates, key=len)


def xmask_imports(path: Path) -> list[tuple[int, str]]:
    """Every xmask module ``path`` imports, at module level or inside a function, with its line.
    ``from xmask.x import y`` counts as an import of ``xmask.x.y`` when that is a module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("xmask")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if not node.module.startswith("xmask"):
                continue
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                is_module = (SRC.parent / Path(*sub.split("."))).with_suffix(".py").is_file() or (
                    SRC.parent / Path(*sub.split(".")) / "__init__.py"
                ).is_file()
                found.append((node.lineno, sub if is_module else node.module))
    return found


LAZY_FACADE = {
    "xmask.inference.loading",
    "xmask.inference.model_folder",
    "xmask.inference.prediction",
    "xmask.inference.predictor",
}
"""The one exception to "imports point down": the lazy public API of ``xmask/__init__.py``
(``from xmask import Predictor``, PEP 562), imported inside its ``__getattr__`` on first use,
never by ``import xmask`` (``tests/test_packaging.py`` checks that torch is not imported)."""


def facade_lines(path: Path) -> range:
    """The lines of ``__getattr__`` in the package's ``__init__.py`` (empty elsewhere)."""
    if path != SRC / "__init__.py":
        return range(0)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    getattr_ = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "__getattr__"]
    return range(getattr_[0].lineno, getattr_[0].end_lineno + 1) if getattr_ else range(0)


def checked_imports(path: Path) -> list[tuple[int, str]]:
    """:func:`xmask_imports` less those of the lazy facade (:data:`LAZY_FACADE`)."""
    lines = facade_lines(path)
    return [(n, t) for n, t in xmask_imports(path) if not (n in lines and t in LAZY_FACADE)]


MODULES = sorted(SRC.rglob("*.py"))


def test_the_lazy_facade_is_the_only_exception() -> None:
    init = SRC / "__init__.py"
    lines = facade_lines(init)
    assert {t for n, t in xmask_imports(init) if n in lines} == LAZY_FACADE
    assert all(not facade_lines(path) for path in MODULES if path != init)


def test_every_module_has_a_layer() -> None:
    for path in MODULES:
        part_of(module_name(path))  # raises ValueError (max of nothing) if unplaced


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_point_down(path: Path) -> None:
    here = module_name(path)
    layer = LAYERS[part_of(here)]
    upward = [
        f"line {line}: {target} (layer {LAYERS[part_of(target)]})"
        for line, target in checked_imports(path)
        if LAYERS[part_of(target)] > layer
    ]
    assert not upward, f"{here} (layer {layer}) imports upward: {upward}"
    if here.startswith(NEVER_TRAIN):
        train = [t for _, t in xmask_imports(path) if t.startswith("xmask.train")]
        assert not train, f"{here} imports the training code: {train}"


def test_no_cycles_between_parts() -> None:
    edges: dict[str, set[str]] = {}
    for path in MODULES:
        here = part_of(module_name(path))
        for _, target in checked_imports(path):
            there = part_of(target)
            if there != here:
                edges.setdefault(here, set()).add(there)
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            assert state.get(nxt) != 1, f"import cycle: {' → '.join([*trail, node, nxt])}"
            if nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [])


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from xmask.train.config import TrainConfig\n")
    assert xmask_imports(bad) == [(2, "xmask.train.config")]
    assert LAYERS[part_of("xmask.train.config")] > LAYERS[part_of("xmask.inference.predictor")]


def test_rules_are_defined_once() -> None:
    definitions = {
        name: [
            f"{module_name(p)}:{i}"
            for p in MODULES
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
            if re.match(rf"\s*{name}\s*[:=]", line)
        ]
        for name in ("R_MIN", "COUNT_STRIDE", "MAX_PIXELS", "DEFAULT_MODEL")
    }
    for name, where in definitions.items():
        assert len(where) == 1, f"{name} defined {len(where)} times: {where}"


def test_no_module_beyond_one_sitting_and_no_outside_citations() -> None:
    for path in MODULES:
        text = path.read_text(encoding="utf-8")
        assert len(text.splitlines()) <= 450, f"{module_name(path)}: over 450 lines"
        assert "REFERENCE.md" not in text, f"{module_name(path)} cites a file outside the repo"
