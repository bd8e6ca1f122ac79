"""Model selection on a held-out validation list (never the test set): the held-out images leave
the training pools, are evaluated every `eval_every` epochs, and the best teacher is kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import tiny_crowd, tiny_train_overrides
from xmask.errors import XmaskError
from xmask.inference.calibration import CountCalibration, read_calibration, write_calibration
from xmask.inference.checkpoint import latest_step
from xmask.train.config import load_config, to_yaml
from xmask.train.run_folder import load_trained_model
from xmask.train.trainer import Trainer


def _config(root: Path, validation: str) -> list[str]:
    return [
        *tiny_train_overrides(root, "val"),
        f"data.validation={root / validation}",
        "schedule.epochs=2",
        "schedule.eval_every=1",
    ]


@pytest.fixture(scope="module")
def crowd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tiny_crowd(tmp_path_factory.mktemp("val"), images=6, labeled=2)
    (root / "val.txt").write_text("syn_0004.png\nsyn_0005.png\n")
    (root / "bad-val.txt").write_text("syn_0001.png\n")
    return root


def test_validation_selects_best_teacher(crowd: Path) -> None:
    trainer = Trainer(load_config(None, _config(crowd, "val.txt")))
    assert trainer.validation.names == ["syn_0004.png", "syn_0005.png"]
    assert set(trainer.unlabeled) == {0, 1, 2, 3}
    trainer.fit()
    run = crowd / "runs" / "val"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert all("val_mae" in r for r in records)
    assert trainer.state.best == min(r["val_mae"] for r in records)
    model, cfg = load_trained_model(run / "best")
    assert cfg.name == "val" and not model.training
    best_step = json.loads((run / "best" / "latest.json").read_text())["step"]
    calibration = read_calibration(run / "best", "teacher")
    assert calibration is not None and calibration.step == best_step and calibration.images == 2


def test_a_stage_with_the_counter_frozen_keeps_its_threshold_for_best_too(crowd: Path) -> None:
    start = crowd / "runs" / "val"
    if not (start / "best").is_dir():
        Trainer(load_config(None, _config(crowd, "val.txt"))).fit()
    step = latest_step(start / "checkpoints")
    marked = CountCalibration(0.123, 1.0, 2.0, 99, step=step, which="teacher")
    write_calibration(start / "checkpoints", marked)
    overrides = [*_config(crowd, "val.txt"), "name=val4", f"offset.init={start}"]
    trainer = Trainer(load_config("stage4-cpu", [*overrides, "schedule.steps_per_epoch=2"]))
    trainer.fit()
    run = crowd / "runs" / "val4"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert trainer.state.best == pytest.approx(1.0 - max(r["val_f1_4"] for r in records))
    for folder in (run / "checkpoints", run / "best"):
        kept = read_calibration(folder, "teacher")
        assert kept is not None and (kept.threshold, kept.images) == (0.123, 99)  # not redone


def test_validation_images_must_not_be_labeled(crowd: Path) -> None:
    with pytest.raises(XmaskError, match="also labeled"):
        Trainer(load_config(None, _config(crowd, "bad-val.txt")))


def test_all_labeled_leaves_validation_out(crowd: Path) -> None:
    trainer = Trainer(load_config(None, [*_config(crowd, "val.txt"), "data.labeled=all"]))
    labeled = {trainer.samples.dataset.names[i] for i in trainer.labeled}
    assert labeled == {f"syn_000{i}.png" for i in range(4)}
    assert trainer.validation.names == ["syn_0004.png", "syn_0005.png"]


def test_resume_from_corrupt_run_folder_is_a_clear_error(
    crowd: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from xmask.cli import main

    checkpoints = crowd / "runs" / "broken" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "latest.json").write_text("{truncated")
    overrides = [*_config(crowd, "val.txt"), "name=broken"]
    assert main(["train", *overrides, "--resume"]) == 1
    assert "config.yaml: not found: the run folder is incomplete" in caplog.text
    (checkpoints.parent / "config.yaml").write_text(to_yaml(load_config(None, overrides)))
    assert main(["train", *overrides, "--resume"]) == 1
    assert "latest.json: corrupt JSON" in caplog.text


def test_calibrate_on_the_held_out_images(crowd: Path, caplog: pytest.LogCaptureFixture) -> None:
    from xmask.cli import main

    overrides = [*_config(crowd, "val.txt"), "name=held", "schedule.epochs=1", "calibrate=false"]
    Trainer(load_config(None, overrides)).fit()
    run = crowd / "runs" / "held"
    args = ["calibrate", "--model", str(run), "--which", "teacher", "--device", "cpu"]
    assert main([*args, "--images", "validation", "--scale", "adaptive"]) == 0
    assert read_calibration(run / "checkpoints", "teacher").images == 2  # the held-out two
    bare = [*tiny_train_overrides(crowd, "bare"), "schedule.epochs=1", "calibrate=false"]
    Trainer(load_config(None, bare)).fit()
    bare_args = ["calibrate", "--model", str(crowd / "runs" / "bare"), "--device", "cpu"]
    assert main([*bare_args, "--images", "validation"]) == 1
    assert "holds no images out" in caplog.text
