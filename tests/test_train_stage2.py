"""Stage 2 in the trainer: from a Stage-1 run to a mask head, on tiny synthetic crowds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_crowd, tiny_train_overrides
from xmask.cli import EXIT_ERROR, EXIT_OK, main
from xmask.data.synthetic import make_crowd_folder
from xmask.train.config import load_config
from xmask.train.run_folder import load_trained_model
from xmask.train.stages.base import freeze_except
from xmask.train.stages.mask import TRAINABLE

STAGE2 = ["stage=2", "model.mask_channels=8", "schedule.steps_per_epoch=2", "schedule.epochs=2"]
STAGE2 += ["teacher.warmup_epochs=0"]  # the unlabeled branch opens in the second epoch


@pytest.fixture(scope="module")
def stage1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tiny_crowd(tmp_path_factory.mktemp("s2"), images=5, labeled=3)
    overrides = [*tiny_train_overrides(root, "stage1"), "schedule.epochs=2"]
    overrides += ["schedule.steps_per_epoch=2", "calibrate=false"]
    assert main(["train", *overrides]) == EXIT_OK
    return root


def stage2_overrides(root: Path, name: str) -> list[str]:
    return [*tiny_train_overrides(root, name), *STAGE2, f"mask.init={root / 'runs' / 'stage1'}"]


def test_stage2_trains_only_the_mask_head(stage1: Path) -> None:
    overrides = [*stage2_overrides(stage1, "stage2"), "calibrate=false"]
    overrides += ["mask.p_high=0.3"]  # a barely trained teacher: let its points be centres
    assert main(["train", *overrides]) == EXIT_OK
    run = stage1 / "runs" / "stage2"
    assert sorted(p.name for p in (run / "annotations" / "masks").iterdir()) == [
        "syn_0000.png",
        "syn_0001.png",
        "syn_0002.png",
    ]  # the labeled images only, annotated by the superpixel backend
    before, _ = load_trained_model(stage1 / "runs" / "stage1")
    after, cfg = load_trained_model(run)
    assert cfg.model.mask_head and after.mask_head is not None
    for name, value in before.state_dict().items():
        assert torch.equal(value, after.state_dict()[name]), name  # nothing else moved
    out = after(torch.rand(1, 3, 64, 80))
    assert out.embedding is not None and out.embedding.shape == (1, 16, 16, 20)
    metrics = (run / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 2 and '"pseudo_points_per_step": 0.0' not in metrics[1]
    assert '"semi": 0.0' not in metrics[1]  # the unlabeled branch ran, with centres


def test_stage2_with_given_masks_and_predicted_centres(
    tmp_path: Path, stage1: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "exact"
    make_crowd_folder(root, 4, height=80, width=96, n_heads=(4, 12), masks=True)
    (root / "labeled.txt").write_text("syn_0000.png\nsyn_0001.png\n")
    overrides = [*stage2_overrides(root, "given"), f"mask.init={stage1 / 'runs' / 'stage1'}"]
    overrides += [f"mask.masks={root}", "mask.centres=predicted", "mask.trainable=[mask_head,neck]"]
    assert main(["train", *overrides, "calibrate=false"]) == EXIT_OK
    assert not (root / "runs" / "given" / "annotations").exists()
    run = str(root / "runs" / "given")
    common = ["evaluate", "--checkpoint", run, "--split", "train", "--json", "--threshold", "-9"]
    capsys.readouterr()
    assert main([*common, "--masks", str(root)]) == EXIT_OK
    scores = json.loads(capsys.readouterr().out)["segmentation"]
    heads = sum(len(np.loadtxt(p, ndmin=2)) for p in root.glob("syn_*.txt"))
    assert scores["images"] == 4 and scores["given"]["gt_instances"] == heads
    assert scores["given"]["pred_instances"] == heads  # every given head segmented
    assert 0 < scores["given"]["mean_iou"] <= 1 and scores["predicted"]["pred_instances"] > 0
    stage1_run = str(stage1 / "runs" / "stage1")
    assert main(["evaluate", "--checkpoint", stage1_run, "--masks", str(root)]) == EXIT_ERROR


def test_stage2_needs_a_stage1_run_and_masks(tmp_path: Path, stage1: Path) -> None:
    assert main(["train", *tiny_train_overrides(stage1, "x"), *STAGE2]) == EXIT_ERROR
    empty = tmp_path / "no-masks"
    (empty / "masks").mkdir(parents=True)
    overrides = [*stage2_overrides(stage1, "y"), f"mask.masks={empty}"]
    assert main(["train", *overrides]) == EXIT_ERROR


def test_freeze_except() -> None:
    from xmask.models import build_model

    cfg = load_config(None, ["model.weights=null", "model.mask_head=true"])
    model = build_model(cfg.model)
    frozen = freeze_except(model, ["mask_head"], TRAINABLE)
    assert model.mask_head is not None
    assert all(p.requires_grad for p in model.mask_head.parameters())
    assert not any(p.requires_grad for m in frozen for p in m.parameters())
    assert len(frozen) == 3
    with pytest.raises(Exception, match="subset"):
        freeze_except(model, ["backbone"], TRAINABLE)


def test_stage2_resume_reproduces_the_straight_run(stage1: Path) -> None:
    straight = [*stage2_overrides(stage1, "straight"), "calibrate=false", "mask.p_high=0.3"]
    assert main(["train", *straight]) == EXIT_OK
    split = [*stage2_overrides(stage1, "split"), "calibrate=false", "mask.p_high=0.3"]
    assert main(["train", *split, "schedule.epochs=1"]) == EXIT_OK
    assert main(["train", "--resume", *split]) == EXIT_OK
    a, _ = load_trained_model(stage1 / "runs" / "straight", which="student")
    b, _ = load_trained_model(stage1 / "runs" / "split", which="student")
    assert a.mask_head is not None and b.mask_head is not None
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name
