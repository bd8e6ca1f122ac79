"""Count-threshold calibration: counting, the MAE curve and the tie rule against loops, a model
with known logits, storage beside the checkpoint, and the train / calibrate / evaluate flow."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as nnf

from conftest import tiny_crowd, tiny_train_overrides
from xmask.cli import EXIT_ERROR, EXIT_OK, main
from xmask.inference.calibration import (
    CALIBRATION_FILE,
    DEFAULT_CANDIDATES,
    CountCalibration,
    calibrate_count_threshold,
    choose_calibration,
    counts_above,
    pick_threshold,
    read_calibration,
    threshold_maes,
    weights_location,
    write_calibration,
)
from xmask.inference.checkpoint import (
    FORMAT,
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from xmask.inference.count_rule import CountRule
from xmask.inference.run_folder import run_networks
from xmask.types import ModelOutput, Sample


@pytest.mark.parametrize("seed", range(5))
def test_counts_and_maes_match_loops(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    grids = [torch.randint(-8, 8, (1, 1, 5, 7), generator=gen).float() / 4 for _ in range(4)]
    true = [int(x) for x in torch.randint(0, 30, (4,), generator=gen)]
    candidates = torch.tensor(DEFAULT_CANDIDATES, dtype=torch.float64)
    for grid in grids:
        loop = [sum(1 for v in grid.flatten().tolist() if v > t) for t in DEFAULT_CANDIDATES]
        assert counts_above(grid, candidates).tolist() == loop
    maes = threshold_maes(torch.stack([counts_above(g, candidates) for g in grids]), true)
    for k, t in enumerate(DEFAULT_CANDIDATES):
        counts = [sum(1 for v in g.flatten().tolist() if v > t) for g in grids]
        errors = [abs(c - n) for c, n in zip(counts, true, strict=True)]
        assert maes[k].item() == pytest.approx(np.mean(errors))


def test_ties_go_to_the_threshold_closest_to_zero() -> None:
    candidates = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0, 1.5])
    assert pick_threshold(torch.tensor([3.0, 1.0, 2.0, 1.0, 1.0, 4.0]), candidates) == 1
    assert pick_threshold(torch.tensor([3.0, 2.0, 1.0, 1.0, 1.0, 4.0]), candidates) == 2
    assert pick_threshold(torch.tensor([3.0, 2.0, 2.0, 1.0, 1.0, 1.0]), candidates) == 3


def test_threshold_maes_needs_matching_inputs() -> None:
    with pytest.raises(ValueError, match="equally many"):
        threshold_maes(torch.zeros(1, 3), [1, 2])


class LevelModel(nn.Module):
    """Logit of a cell = 4·(mean red of its 4×4 pixels) − 2: a grey level is a logit."""

    def forward(self, images: torch.Tensor) -> ModelOutput:
        return ModelOutput(logits=4 * nnf.avg_pool2d(images[:, :1], 4, 4, ceil_mode=True) - 2)


def _sample(name: str, levels: dict[float, int], heads: int) -> Sample:
    """A 16×16 image whose 16 cells carry the given logits (count of cells per logit)."""
    values = [v for v, n in levels.items() for _ in range(n)]
    values += [-2.0] * (16 - len(values))
    red = np.repeat(np.repeat(((np.array(values) + 2) / 4).reshape(4, 4), 4, 0), 4, 1)
    image = np.zeros((16, 16, 3), np.uint8)
    image[..., 0] = np.round(red * 255)
    points = np.full((heads, 2), 8.0, np.float32)
    return Sample(name=name, image=image, points=points)


def test_calibration_finds_the_separating_threshold() -> None:
    # Two logit levels, 0.494 and 1.49 after 8-bit rounding; the heads are the cells at the
    # higher one, so any threshold in [0.494, 1.49) is exact; 0.5 is the closest to 0.
    samples = [_sample("a", {0.5: 3, 1.5: 2}, 2), _sample("b", {0.5: 1, 1.5: 5}, 5)]
    model = LevelModel().train()
    cal = calibrate_count_threshold(model, samples, "cpu", step=7, which="teacher", progress=False)
    assert cal == CountCalibration(
        threshold=0.5, mae=0.0, mae_at_zero=2.0, images=2, step=7, which="teacher"
    )
    assert model.training  # mode restored
    with pytest.raises(ValueError, match="include 0"):
        calibrate_count_threshold(model, samples, "cpu", step=0, which="t", candidates=[0.5])


def _checkpoint_folder(tmp_path: Path, step: int) -> Path:
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    (tmp_path / "run" / "config.yaml").write_text("name: run\n")
    (folder / "latest.json").write_text(json.dumps({"format": FORMAT, "step": step}))
    return folder


def test_storage_round_trip_and_step_check(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = _checkpoint_folder(tmp_path, 12)
    run = folder.parent
    assert weights_location(run) == (folder, 12)
    assert weights_location(folder) == (folder, 12)
    weights = folder / "step-00000012.safetensors"
    weights.write_bytes(b"")
    assert weights_location(weights) == (folder, 12)
    other = tmp_path / "model.safetensors"
    other.write_bytes(b"")
    assert weights_location(other) == (tmp_path, None)
    assert read_calibration(run, "teacher") is None
    teacher = CountCalibration(0.3, 1.0, 2.0, 5, 12, "teacher")
    student = CountCalibration(-0.2, 1.5, 2.5, 5, 11, "student")
    write_calibration(folder, teacher)
    write_calibration(folder, student)
    assert read_calibration(run, "teacher") == teacher
    assert read_calibration(weights, "teacher") == teacher
    with caplog.at_level(logging.WARNING):
        assert read_calibration(run, "student") is None
    assert "calibrated at step 11, the weights are from step 12" in caplog.text
    two = CountCalibration(0.3, 1.0, 2.0, 5, 12, "teacher", split=4.5, dense_threshold=0.7)
    write_calibration(folder, two)
    assert read_calibration(run, "teacher").rule == CountRule(0.3, 4.5, 0.7)
    (folder / CALIBRATION_FILE).write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="not a JSON object"):
        read_calibration(run, "teacher")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tiny_crowd(tmp_path_factory.mktemp("cal"), images=5, labeled=3)
    overrides = [*tiny_train_overrides(root, "cal"), "schedule.epochs=2"]
    overrides += ["schedule.steps_per_epoch=2", "calibrate_student=true"]
    assert main(["train", *overrides]) == EXIT_OK
    return root / "runs" / "cal"


def test_training_ends_calibrated_and_evaluate_uses_it(
    trained_run: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    folder, step = weights_location(trained_run)
    stored = json.loads((folder / CALIBRATION_FILE).read_text())
    assert set(stored) == {"teacher", "student"}
    assert all(e["step"] == step == 4 and e["images"] == 3 for e in stored.values())
    assert all(e["mae"] <= e["mae_at_zero"] for e in stored.values())

    common = ["evaluate", "--checkpoint", str(trained_run), "--split", "train", "--json"]
    assert main(common) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["count_threshold"] == stored["teacher"]["threshold"]
    assert main([*common, "--which", "student"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["count_threshold"] == stored["student"]["threshold"]
    assert main([*common, "--threshold", "1e9"]) == EXIT_OK
    out = json.loads(capsys.readouterr().out)
    assert out["count_threshold"] == 1e9 and out["pred_total"] == 0
    with caplog.at_level(logging.ERROR):
        assert main([*common, "--threshold", "nan"]) == EXIT_ERROR
    assert "--threshold: expected auto or a finite number" in caplog.text


def test_calibrate_command_reproduces_the_trainer(
    trained_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, _ = weights_location(trained_run)
    file = folder / CALIBRATION_FILE
    before = json.loads(file.read_text())
    file.unlink()
    assert main(["calibrate", "--checkpoint", str(trained_run), "--which", "teacher"]) == EXIT_OK
    assert "teacher: count threshold" in capsys.readouterr().out
    assert json.loads(file.read_text()) == {"teacher": before["teacher"]}
    assert main(["calibrate", "--checkpoint", str(trained_run)]) == EXIT_OK
    assert json.loads(file.read_text()) == before
    # 3 labeled images are too few for two regimes: the single threshold stays
    assert main(["calibrate", "--checkpoint", str(trained_run), "--two-regimes"]) == EXIT_OK
    assert json.loads(file.read_text()) == before


def test_calibrate_both_takes_the_teacher_alone_where_there_is_no_student(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    folder, step = weights_location(run)
    checkpoint = load_checkpoint(folder)
    teacher = {k: v for k, v in checkpoint.tensors.items() if k.startswith("teacher.")}
    best = run / "best"
    save_checkpoint(best, Checkpoint(teacher, checkpoint.state), keep=1)
    assert run_networks(run) == ("teacher", "student") and run_networks(best) == ("teacher",)
    assert main(["calibrate", "--checkpoint", str(best)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "student: none in" in out and "teacher: count threshold" in out
    stored = json.loads((best / CALIBRATION_FILE).read_text())
    assert set(stored) == {"teacher"} and stored["teacher"]["step"] == step
    assert main(["calibrate", "--checkpoint", str(best), "--which", "student"]) == EXIT_ERROR


def _two_density_counts() -> tuple[torch.Tensor, list[int], list[int], torch.Tensor]:
    """12 images at thresholds 0 and 0.5: sparse ones right at 0.5, dense ones at 0."""
    counts = torch.tensor([[12, 10]] * 6 + [[1000, 800]] * 6)
    return counts, [10] * 6 + [1000] * 6, [100_000] * 12, torch.tensor([0.0, 0.5])


def test_choose_calibration_splits_only_when_asked_and_better() -> None:
    counts, truth, pixels, thresholds = _two_density_counts()
    single = choose_calibration(
        counts, truth, pixels, thresholds, step=3, which="teacher", two_regimes=False
    )
    assert single.rule == CountRule(0.0)
    assert single.mae == pytest.approx(1.0)
    two = choose_calibration(
        counts, truth, pixels, thresholds, step=3, which="teacher", two_regimes=True
    )
    assert (two.threshold, two.dense_threshold, two.mae, two.mae_at_zero) == (0.5, 0.0, 0.0, 1.0)
    exact = counts[:, 1:].repeat(1, 2)
    kept = choose_calibration(
        exact, [10] * 6 + [800] * 6, pixels, thresholds, step=3, which="teacher", two_regimes=True
    )
    assert kept.rule == CountRule(0.0)


def test_two_regimes_need_a_tenth_of_the_images_on_each_side() -> None:
    counts, truth, pixels, thresholds = _two_density_counts()
    counts = torch.cat([counts[:1], counts[6:].repeat(10, 1)])
    truth, pixels = truth[:1] + [1000] * 60, [100_000] * 61
    calibration = choose_calibration(
        counts, truth, pixels, thresholds, step=3, which="teacher", two_regimes=True
    )
    assert calibration.split is None


def test_training_calibrates_two_regimes_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import xmask.inference.calibration as calibration

    asked: list[bool] = []
    choose = calibration.choose_calibration

    def spy(*args: object, two_regimes: bool, **kwargs: object) -> CountCalibration:
        asked.append(two_regimes)
        return choose(*args, two_regimes=two_regimes, **kwargs)

    monkeypatch.setattr(calibration, "choose_calibration", spy)
    root = tiny_crowd(tmp_path, images=3, labeled=2)
    overrides = [*tiny_train_overrides(root, "two"), "schedule.epochs=1"]
    overrides += ["schedule.steps_per_epoch=1", "calibrate_two_regimes=true"]
    assert main(["train", *overrides]) == EXIT_OK
    assert asked == [True]
