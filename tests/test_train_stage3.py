"""Stage 3 in the trainer (mask-constrained counting) and its pseudo-mask filtering, on tiny
synthetic crowds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_crowd, tiny_train_overrides
from xmask.cli import EXIT_ERROR, EXIT_OK, main
from xmask.geometry.circles import circle_pixels
from xmask.train.config import MaskStageConfig
from xmask.train.run_folder import load_trained_model
from xmask.train.stages.mask import teacher_pseudo_masks
from xmask.types import ModelOutput

SHORT = ["schedule.steps_per_epoch=2", "schedule.epochs=2", "calibrate=false"]


@pytest.fixture(scope="module")
def stage2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Stage-1 run and the Stage-2 run on top of it (``runs/stage1``, ``runs/stage2``)."""
    root = tiny_crowd(tmp_path_factory.mktemp("s3"), images=5, labeled=3)
    assert main(["train", *tiny_train_overrides(root, "stage1"), *SHORT]) == EXIT_OK
    overrides = [*tiny_train_overrides(root, "stage2"), *SHORT, "stage=2"]
    overrides += ["model.mask_channels=8", f"mask.init={root / 'runs' / 'stage1'}"]
    assert main(["train", *overrides]) == EXIT_OK
    return root


def stage3_overrides(root: Path, name: str) -> list[str]:
    return [
        *tiny_train_overrides(root, name),
        *SHORT,
        "stage=3",
        "teacher.warmup_epochs=0",
        "teacher.start_weight=0.5",
        "mask.p_high=0.3",  # a barely trained teacher: let its points be valid masks
        "constraint.loss.fg_weight=1.0",
        f"constraint.init={root / 'runs' / 'stage2'}",
        f"mask.masks={root / 'runs' / 'stage2' / 'annotations'}",
    ]


def _changed(before: torch.nn.Module, after: torch.nn.Module) -> set[str]:
    """Top-level modules with at least one weight that moved."""
    new = after.state_dict()
    return {k.split(".")[0] for k, v in before.state_dict().items() if not torch.equal(v, new[k])}


def test_stage3_trains_only_the_count_head_and_logs_both_fg_values(stage2: Path) -> None:
    assert main(["train", *stage3_overrides(stage2, "stage3")]) == EXIT_OK
    before, _ = load_trained_model(stage2 / "runs" / "stage2")
    after, cfg = load_trained_model(stage2 / "runs" / "stage3")
    assert cfg.stage == 3 and cfg.model.mask_head
    assert _changed(before, after) == {"count_head"}
    records = [json.loads(x) for x in (stage2 / "runs" / "stage3" / "metrics.jsonl").open()]
    assert [r["unlabeled_weight"] for r in records] == [0.5, 1.0]  # start 0.5, ramp 0.5
    for record in records:
        assert record["lab_instances"] > 0 and record["unl_instances"] > 0
        assert {"lab_fg", "lab_fg_literal", "lab_bg", "unl_fg_literal"} <= set(record)
        assert record["semi"] > 0 and record["pseudo_mask_seconds"] > 0


def test_stage3_trains_the_modules_it_is_told_to(stage2: Path) -> None:
    overrides = [*stage3_overrides(stage2, "neck"), "constraint.trainable=[neck,count_head]"]
    assert main(["train", *overrides]) == EXIT_OK
    before, _ = load_trained_model(stage2 / "runs" / "stage2")
    after, _ = load_trained_model(stage2 / "runs" / "neck")
    assert _changed(before, after) == {"neck", "count_head"}


def test_stage3_refuses_bad_modules_and_runs_without_a_mask_head(
    stage2: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = [*stage3_overrides(stage2, "bad"), "constraint.trainable=[mask_head]"]
    assert main(["train", *bad]) == EXIT_ERROR
    assert "subset of ('backbone', 'neck', 'count_head')" in caplog.text
    stage1 = [*stage3_overrides(stage2, "from1"), f"constraint.init={stage2 / 'runs' / 'stage1'}"]
    assert main(["train", *stage1]) == EXIT_ERROR
    assert "needs a run with a mask head" in caplog.text


def _output(probabilities: dict[tuple[int, int], float], grid: tuple[int, int]) -> ModelOutput:
    """A teacher output whose cells have the given probabilities (others 0.01) and an
    embedding that is the same everywhere (every circle pixel has energy 0 + distance)."""
    logits = torch.full((1, 1, *grid), math.log(0.01 / 0.99))
    for (i, j), p in probabilities.items():
        logits[0, 0, i, j] = math.log(p / (1 - p))
    embedding = torch.zeros(1, 16, *grid)
    embedding[:, 0] = 1.0
    return ModelOutput(logits=logits, embedding=embedding)


def test_pseudo_masks_segment_p_low_points_and_validate_p_high_ones() -> None:
    out = _output({(2, 2): 0.05, (2, 8): 0.3, (8, 2): 0.97, (8, 8): 0.6}, (12, 12))
    cfg = MaskStageConfig(p_low=0.1, p_high=0.95)
    (pm,) = teacher_pseudo_masks(out, (48, 48), cfg)
    np.testing.assert_allclose(pm.instances.points, [[34, 10], [10, 34], [34, 34]])
    assert pm.valid.tolist() == [False, True, False]  # cells in row-major order
    assert sorted(np.unique(pm.instances.labels).tolist()) == [0, 1, 2, 3]
    assert len(pm.instances) == 3  # the p = 0.05 cell is not segmented


def test_the_density_gate_gives_low_points_their_whole_circle() -> None:
    out = _output({(2, 8): 0.3, (8, 2): 0.97}, (12, 12))
    cfg = MaskStageConfig(p_low=0.1, p_high=0.95)
    cfg.pseudo.tau_g = 0.05  # the energy test keeps almost nothing
    (plain,) = teacher_pseudo_masks(out, (48, 48), cfg)
    (gated,) = teacher_pseudo_masks(out, (48, 48), cfg, gate=0.5)
    radius = float(gated.instances.radii[0])
    circle = circle_pixels(np.array([[34.0, 10.0]]), np.array([radius]), (48, 48))
    whole = np.zeros((48, 48), dtype=bool)
    whole.reshape(-1)[circle.flat.numpy()] = True
    assert ((gated.instances.labels == 1) == whole).all()
    assert (plain.instances.labels == 1).sum() < whole.sum()
    np.testing.assert_array_equal(gated.instances.labels == 2, plain.instances.labels == 2)
