"""``benchmarks/accuracy.py`` and ``accuracy_report.py``: the lattice detector, the variants and
the tables of docs/accuracy.md, on records and images made here."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from xmask.data.synthetic import make_crowd

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _script(name: str) -> ModuleType:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))


accuracy = _script("accuracy")
report = _script("accuracy_report")


def test_a_regular_grid_over_few_heads_is_a_lattice() -> None:
    grid = np.array([[2.0 + 4 * i, 2.0 + 4 * j] for i in range(8) for j in range(8)], np.float32)
    few = grid[::4]  # 16 true heads under 64 predicted points
    assert accuracy.lattice_blocks(grid, few, (64, 64)) == 1
    assert accuracy.lattice_blocks(grid, grid, (64, 64)) == 0  # as many heads as points
    sparse = grid[::2]  # 32 points but spread over the block: still a grid of 32
    assert accuracy.lattice_blocks(sparse, few, (64, 64)) == 1
    assert accuracy.lattice_blocks(sparse[:31], few, (64, 64)) == 0
    moved = grid + np.float32(32.0)  # the same grid in the next block
    assert accuracy.lattice_blocks(moved, np.zeros((0, 2), np.float32), (64, 64)) == 1


@pytest.mark.parametrize("name", ["x1", "grey", "x0.5", "x2"])
def test_variants_keep_points_on_their_heads(name: str) -> None:
    sample = make_crowd(60, 80, 12, seed=1, background="flat")
    image, points = accuracy.variant(sample, name)
    factor = accuracy.FACTORS[name]
    assert image.shape == (round(60 * factor), round(80 * factor), 3)
    np.testing.assert_allclose(points, sample.points * factor, rtol=1e-5)
    if name == "grey":
        assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()


def _record(name: str, gt: int, pred: int, lattice: int = 0) -> dict:
    return {
        "name": name, "gt": gt, "pred": pred, "size": [768, 1024], "scale": 1.0, "passes": 1,
        "head_px": 20.0, "tp4": min(gt, pred) // 2, "tp8": min(gt, pred),
        "heads_by_size": [0, 0, gt, 0], "found_by_size": [0, 0, min(gt, pred), 0],
        "lattice_blocks": lattice, "seconds": 0.5,
    }  # fmt: skip


def test_report_tables_from_records(tmp_path: Path) -> None:
    folder = tmp_path / "before"
    folder.mkdir()
    rows = [_record("a.jpg", 100, 120, lattice=2), _record("b.jpg", 50, 40)]
    text = "\n".join(json.dumps(r) for r in rows) + "\n{truncated"
    (folder / "shb-x1.jsonl").write_text(text)
    (folder / "shb-x2.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:1]))
    errors = report.errors(report.load(tmp_path, "before", "shb", "x1"))
    assert errors["images"] == 2 and errors["mae"] == pytest.approx(15.0)
    assert errors["bias"] == pytest.approx(5.0) and errors["mre"] == pytest.approx(20.0)
    assert errors["lattice"] == 1 and errors["off30"] == 0.0
    args = type("Args", (), {"work": tmp_path, "before": "before", "after": [],
                             "cross_a": None, "cross_b": None, "worst": 5,
                             "describe": ["before=the first model"]})()  # fmt: skip
    markdown = report.report(args)
    assert "| before | B | x1 | 2 | 15.00 |" in markdown
    assert "- `before`: the first model" in markdown
    assert "| before | B | – | – | 1.33 | – |" in markdown  # x2 MAE 20 over x1 MAE 15
    assert "| B | b.jpg | 50 | 40 | -20 % |" in markdown
