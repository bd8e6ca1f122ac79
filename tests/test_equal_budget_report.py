"""``benchmarks/equal_budget.py --report-only``: every figure of docs/results.md read from the
pipelines' ``pipeline.json``, the win count and the overhead breakdown right."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

from xmask.train.config import load_config, to_yaml

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "equal_budget.py"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("equal_budget", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _evaluation(mae: float, masks: bool) -> dict:
    loc = {"4": {"f1": 0.25}, "8": {"f1": 0.5}}
    result = {"mae": mae, "rmse": 2 * mae, "localisation": loc, "wall": 60.0}
    if masks:
        result["segmentation"] = {"predicted": {"mean_iou": 0.2, "f1": 0.1}}
    return result


def _pipeline(folder: Path, stage3_mae: float) -> None:
    def train(total: float, loop: float, pseudo: float = 0.0) -> dict:
        return {"wall": total, "loop": loop, "pseudo_masks": pseudo, "total": total}

    parts = {
        "stage1": train(600, 540),
        "annotations": {"wall": 120.0, "loop": 0.0, "pseudo_masks": 0.0, "total": 120.0},
        "stage2": train(300, 300, 30),
        "stage3": train(240, 180, 30),
        "stage1-more": train(700, 660),
        "evaluate-stage1": _evaluation(10.0, False),
        "evaluate-stage2": _evaluation(10.0, True),
        "evaluate-stage3": _evaluation(stage3_mae, True),
        "evaluate-stage1-more": _evaluation(9.5, False),
    }
    summary = {"parts": parts, "seconds_total": 2100.0, "overhead_share": 0.25}
    folder.mkdir(parents=True)
    (folder / "pipeline.json").write_text(json.dumps(summary))
    for stage in ("stage1", "stage2", "stage3", "stage1-more"):
        (folder / stage).mkdir()
        overrides = [f"name={stage}", "threads=1"]
        (folder / stage / "config.yaml").write_text(to_yaml(load_config(None, overrides)))


def test_report_reads_every_figure_from_the_pipelines(tmp_path: Path) -> None:
    script = _script()
    _pipeline(tmp_path / "shb-40-cpu-pipeline", stage3_mae=9.0)
    _pipeline(tmp_path / "sha-40-cpu-pipeline", stage3_mae=9.9)
    earlier = tmp_path / "earlier-stage1"  # a seeded Stage 1: its own run's threads are shown
    earlier.mkdir()
    (earlier / "config.yaml").write_text(to_yaml(load_config(None, ["threads=2"])))
    (tmp_path / "sha-40-cpu-pipeline" / "stage1" / "seeded-from.txt").write_text(f"{earlier}\n")
    (tmp_path / "hardware.json").write_text(json.dumps({"machine": "Test CPU", "torch": "9"}))
    doc = tmp_path / "results.md"
    script.report(tmp_path, ["shb-5", "shb-40", "sha-40"], doc)
    text = doc.read_text()
    assert "on 1 of 2 finished settings" in text  # 9.0 < 9.5 wins, 9.9 does not
    assert "Hardware: Test CPU; torch 9." in text
    assert text.count("Not finished yet.") == 1
    assert "| Stage 3 (mask-constrained counting) | 21.0 | 9.00 | 18.00 | 0.250 / 0.500 " in text
    assert text.count("stage1: 1500 epochs × None steps, batch 16 + 16, lr 5e-05, 1 thread;") == 1
    assert text.count("stage1: 1500 epochs × None steps, batch 16 + 16, lr 5e-05, 2 threads;") == 1
    assert text.count("stage1-more: until the budget, 1 thread.") == 2
    assert "Stage 3 does not beat Stage 1 alone" in text and "XMask 56.2 / 93.5" in text
    # 120 s annotation; 60 s pseudo-masks; 60 + 0 + 60 + 40 s outside loops; 4 × 60 s evaluation
    assert (
        "Overhead (min): annotation of the labeled images 2.0; pseudo-masks 1.0; loading and "
        "calibration 2.7; test evaluation (and test-mask annotation) 4.0." in text
    )


def test_report_keeps_finished_sections_whose_pipelines_are_gone(tmp_path: Path) -> None:
    script = _script()
    _pipeline(tmp_path / "shb-40-cpu-pipeline", stage3_mae=9.0)
    _pipeline(tmp_path / "sha-40-cpu-pipeline", stage3_mae=9.9)
    doc = tmp_path / "results.md"
    script.report(tmp_path, ["shb-5", "shb-40", "sha-40"], doc)
    first = doc.read_text()
    for folder in ("shb-40-cpu-pipeline", "sha-40-cpu-pipeline"):
        (tmp_path / folder / "pipeline.json").unlink()
    _pipeline(tmp_path / "shb-5-cpu-pipeline", stage3_mae=8.0)
    script.report(tmp_path, ["shb-5", "shb-40", "sha-40"], doc)
    second = doc.read_text()
    assert "on 2 of 3 finished settings" in second  # shb-5 new; shb-40 and sha-40 carried
    assert "Not finished yet." not in second
    for name in ("ShanghaiTech B 40 % labeled", "ShanghaiTech A 40 % labeled"):
        section = first.split(f"## {name}\n")[1].split("\n## ")[0].rstrip()
        assert section in second  # every line of the earlier section, unchanged
    assert second.count("Carried over from an earlier version of this document") == 2
    script.report(tmp_path, ["shb-5", "shb-40", "sha-40"], doc)  # carried again: marked once
    third = doc.read_text()
    assert third.count("Carried over from an earlier version") == 2
    assert "on 2 of 3 finished settings" in third
