"""A folder of a few labeled and many unlabeled images: unlabeled ones need no point file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import tiny_crowd, tiny_train_overrides
from xmask.cli import EXIT_ERROR, EXIT_OK, main
from xmask.data.readers import open_dataset


@pytest.fixture
def crowd(tmp_path: Path) -> Path:
    root = tiny_crowd(tmp_path, images=5, labeled=2)
    for name in ("syn_0002", "syn_0003", "syn_0004"):
        (root / f"{name}.txt").unlink()  # unlabeled images, as a user's camera gives them
    return root


def test_training_draws_unlabeled_images_without_points(crowd: Path) -> None:
    dataset = open_dataset("folder", crowd)
    assert [item.annotated for item in dataset.items] == [True, True, False, False, False]
    assert dataset.load(dataset.items[3], points_optional=True).count == 0
    overrides = [*tiny_train_overrides(crowd, "mixed"), "schedule.epochs=3"]
    overrides += ["schedule.steps_per_epoch=2", "teacher.warmup_epochs=1", "calibrate=true"]
    assert main(["train", *overrides]) == EXIT_OK
    metrics = (crowd / "runs" / "mixed" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(metrics[-1])["unlabeled_weight"] > 0  # the unlabeled branch ran


def test_a_labeled_image_without_points_is_refused(
    crowd: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (crowd / "labeled.txt").write_text("syn_0000.png\nsyn_0003.png\n")
    overrides = [*tiny_train_overrides(crowd, "bad"), "schedule.epochs=1"]
    assert main(["train", *overrides]) == EXIT_ERROR
    assert "1 labeled or validation image(s) have no points: syn_0003.png" in caplog.text
