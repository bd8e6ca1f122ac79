"""``xmask train --pipeline``: every stage in one folder, the equal-budget baseline, and a real
SIGKILL (twice) followed by the same command, which finishes without recomputing anything."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import tiny_crowd, tiny_train_overrides
from xmask.cli import EXIT_ERROR, EXIT_OK, main
from xmask.inference.checkpoint import load_checkpoint


def _overrides(root: Path, name: str) -> list[str]:
    return [
        *tiny_train_overrides(root, name),
        "schedule.epochs=2",
        "schedule.steps_per_epoch=2",
        "schedule.checkpoint_minutes=0",
        "stage2.model.mask_channels=8",
        "pipeline.baseline=true",
        "pipeline.evaluate=test",
    ]


def _command(root: Path, name: str) -> list[str]:
    pipeline = ["--pipeline", "shb-40-cpu-pipeline"]
    return [sys.executable, "-m", "xmask", "train", *pipeline, *_overrides(root, name)]


@pytest.fixture(scope="module")
def crowd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_crowd(tmp_path_factory.mktemp("pipe"), images=5, labeled=2)


def _stamps(folder: Path, skip: str = "pipeline.json") -> dict[str, int]:
    """Modification times of the files under ``folder`` whose name does not start ``skip``."""
    files = [p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(skip)]
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in files}


def test_pipeline_runs_every_stage_then_a_rerun_does_nothing(crowd: Path) -> None:
    args = ["train", "--pipeline", "shb-40-cpu-pipeline", *_overrides(crowd, "pipe")]
    assert main(args) == EXIT_OK
    root = crowd / "runs" / "pipe"
    summary = json.loads((root / "pipeline.json").read_text())
    names = ["stage1", "annotations", "stage2", "stage3", "stage1-more"]
    assert list(summary["parts"]) == [*names, "annotations-test"] + [
        f"evaluate-{n}" for n in ("stage1", "stage2", "stage3", "stage1-more")
    ]
    for stage in ("stage1", "stage2", "stage3", "stage1-more"):
        assert (root / stage / "config.yaml").is_file() and (
            root / stage / "eval-test.json"
        ).is_file()
    assert load_checkpoint(root / "stage3" / "checkpoints").state["step"] == 4
    parts = summary["parts"]
    extra = sum(parts[n]["total"] for n in ("annotations", "stage2", "stage3"))
    more = load_checkpoint(root / "stage1-more" / "checkpoints").state
    assert more["seconds"] >= parts["stage1"]["loop"] + extra  # trained to the equal budget
    assert more["step"] > 4
    assert (
        "segmentation" in parts["evaluate-stage3"]
        and "segmentation" not in parts["evaluate-stage1"]
    )
    assert 0 < summary["overhead_share"] < 1
    thresholds = [
        json.loads((root / stage / "checkpoints" / "calibration.json").read_text())
        for stage in ("stage1", "stage2")
    ]
    assert thresholds[1]["teacher"]["threshold"] == thresholds[0]["teacher"]["threshold"]
    assert set(thresholds[0]) == {"teacher"}  # the student is calibrated only when asked
    stage2 = parts["evaluate-stage2"]  # Stage 2's counter is Stage 1's: its counts are reused
    assert stage2["counting_from"] == "stage1" and "segmentation" in stage2
    assert {k: v for k, v in stage2.items() if k not in ("wall", "segmentation", "counting_from")}
    for key in ("mae", "rmse", "localisation"):
        assert stage2[key] == parts["evaluate-stage1"][key]
    assert thresholds[1]["teacher"]["step"] == 4  # the counter is Stage 1's, at Stage 2's step
    for stage in ("stage1", "stage2", "stage3"):
        assert main(["evaluate", "--checkpoint", str(root / stage), "--split", "test"]) == EXIT_OK
    before = _stamps(root)
    assert main(args) == EXIT_OK
    after = _stamps(root)
    assert after == {**before, "pipeline.yaml": after["pipeline.yaml"]}  # nothing run again
    recipe = root / "pipeline.yaml"  # as written by an xmask with a key it no longer has:
    recipe.write_text(recipe.read_text().replace("  test_masks: null\n", "  old_key: 1\n"))
    assert main(args) == EXIT_OK
    assert "old_key" not in recipe.read_text()
    changed = [*_overrides(crowd, "pipe"), "schedule.epochs=3"]
    assert main(["train", "--pipeline", "shb-40-cpu-pipeline", *changed]) == EXIT_ERROR
    elsewhere = [*_overrides(crowd, "pipe"), "threads=1", "device=cpu"]  # same work, other machine
    before = _stamps(root, skip="pipeline")
    assert main(["train", "--pipeline", "shb-40-cpu-pipeline", *elsewhere]) == EXIT_OK
    assert _stamps(root, skip="pipeline") == before


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _kill_when(path: Path, victim: subprocess.Popen) -> None:
    deadline = time.monotonic() + 300
    while not path.is_file() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert victim.poll() is None, f"the pipeline ended before {path} appeared"
    victim.send_signal(signal.SIGKILL)
    victim.wait()


def test_sigkill_in_stage2_and_stage3_then_the_same_command_finishes(crowd: Path) -> None:
    root = crowd / "runs" / "killed"
    command = _command(crowd, "killed")
    victim = subprocess.Popen(
        command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    _kill_when(root / "stage2" / "checkpoints" / "latest.json", victim)
    stage1 = _stamps(root / "stage1", skip="eval-")
    annotations = _stamps(root / "annotations")
    victim = subprocess.Popen(
        command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    _kill_when(root / "stage3" / "checkpoints" / "latest.json", victim)
    stage2 = _stamps(root / "stage2" / "checkpoints")
    done = subprocess.run(command, env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _stamps(root / "stage1", skip="eval-") == stage1  # nothing trained again
    assert _stamps(root / "annotations") == annotations
    assert _stamps(root / "stage2" / "checkpoints") == stage2
    assert "resumed" in (root / "stage2" / "train.log").read_text()
    assert "resumed" in (root / "stage3" / "train.log").read_text()
    summary = json.loads((root / "pipeline.json").read_text())
    assert "evaluate-stage1-more" in summary["parts"]
    epochs = [json.loads(x)["epoch"] for x in (root / "stage3" / "metrics.jsonl").open()]
    assert epochs == [1, 2]


def test_a_time_budget_ends_training_after_the_step_that_spends_it(crowd: Path) -> None:
    overrides = [*tiny_train_overrides(crowd, "budget"), "schedule.epochs=50"]
    overrides += ["schedule.steps_per_epoch=3", "schedule.time_budget_minutes=1e-6"]
    assert main(["train", *overrides, "calibrate=false"]) == EXIT_OK
    state = load_checkpoint(crowd / "runs" / "budget" / "checkpoints").state
    assert state["step"] == 1 and state["epoch"] == 1 and state["seconds"] > 0
    assert main(["train", *overrides, "calibrate=false", "--resume"]) == EXIT_OK
    assert load_checkpoint(crowd / "runs" / "budget" / "checkpoints").state["step"] == 1


def test_a_pipeline_with_stage4_adds_the_offset_head_last(crowd: Path) -> None:
    overrides = [
        *tiny_train_overrides(crowd, "four"),
        "schedule.epochs=1",
        "schedule.steps_per_epoch=2",
        "stage2.model.mask_channels=8",
        "pipeline.stage4=[stage4-cpu]",
        "stage4.schedule.epochs=1",
        "stage4.schedule.steps_per_epoch=2",
    ]
    assert main(["train", "--pipeline", "shb-40-cpu-pipeline", *overrides]) == EXIT_OK
    root = crowd / "runs" / "four"
    parts = json.loads((root / "pipeline.json").read_text())["parts"]
    assert list(parts)[:5] == ["stage1", "annotations", "stage2", "stage3", "stage4"]
    stage4 = (root / "stage4" / "config.yaml").read_text()
    assert f"init: {root / 'stage3'}" in stage4 and "offset_head: true" in stage4
    calibration = [
        json.loads((root / stage / "checkpoints" / "calibration.json").read_text())["teacher"]
        for stage in ("stage3", "stage4")
    ]
    assert calibration[1]["threshold"] == calibration[0]["threshold"]  # the counter is Stage 3's
