"""The offset head (Stage 4): its loss against a literal reference, the P2R positives it is
trained on, decoding with offsets, and a Stage-4 run that moves only the offset head."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_crowd, tiny_train_overrides
from xmask.cli import EXIT_OK, main
from xmask.inference.count_rule import CountRule
from xmask.inference.decode import decode_heads
from xmask.losses.offset import offset_loss, offset_targets
from xmask.losses.p2r import p2r_loss
from xmask.models import ModelConfig, build_model
from xmask.models.offset_head import MAX_OFFSET, OffsetHead
from xmask.train.run_folder import load_trained_model
from xmask.types import ModelOutput

SHORT = ["schedule.steps_per_epoch=3", "schedule.epochs=2", "calibrate=false"]


def test_the_head_starts_at_the_cell_centres_and_is_bounded() -> None:
    head = OffsetHead(8, channels=4)
    x = torch.randn(2, 8, 5, 6)
    assert head(x).shape == (2, 2, 10, 12) and not head(x).any()
    torch.nn.init.normal_(head.predict.weight, std=50.0)
    assert head(x).abs().max() <= MAX_OFFSET


def test_offset_loss_matches_a_literal_reference() -> None:
    torch.manual_seed(0)
    offsets = torch.randn(2, 2, 3, 4, requires_grad=True)
    cells = torch.tensor([0, 5, 12 + 7])  # image 0 (0, 0) and (1, 1); image 1 (1, 3)
    points = torch.tensor([[2.5, 1.0], [4.0, 7.5], [15.0, 6.5]])
    loss = offset_loss(offsets, cells, points)
    terms = []
    for cell, (px, py) in zip(cells.tolist(), points.tolist(), strict=True):
        b, rest = divmod(cell, 12)
        i, j = divmod(rest, 4)
        for axis, target in ((0, px - (4 * j + 2)), (1, py - (4 * i + 2))):
            d = abs(float(offsets[b, axis, i, j].detach()) - target)
            terms.append(0.5 * d * d if d < 1.0 else d - 0.5)
    assert float(loss.detach()) == pytest.approx(np.mean(terms), rel=1e-6)
    loss.backward()
    assert offsets.grad is not None and offsets.grad[0, :, 0, 1].abs().sum() == 0
    none = offset_loss(offsets, torch.zeros(0, dtype=torch.long), torch.zeros(0, 2))
    assert float(none.detach()) == 0.0 and none.requires_grad
    np.testing.assert_allclose(
        offset_targets(cells, points, (3, 4)).numpy(), [[0.5, -1.0], [-2.0, 1.5], [1.0, 0.5]]
    )


def test_p2r_names_one_positive_cell_per_head_and_its_point() -> None:
    logits = torch.zeros(1, 1, 8, 8)
    points = [torch.tensor([[5.0, 5.0], [21.5, 13.0], [30.0, 29.0]])]
    result = p2r_loss(logits, points)
    assert result.positives == 3 and result.positive_cells is not None
    assert sorted(result.positive_cells.tolist()) == [9, 29, 63]  # cells holding the points
    order = torch.argsort(result.positive_cells)
    np.testing.assert_allclose(result.positive_points[order].numpy(), points[0].numpy())


def test_decoding_moves_points_by_their_offsets_and_keeps_them_inside() -> None:
    logits = torch.full((1, 1, 2, 3), -5.0)
    logits[0, 0, 0, 1] = logits[0, 0, 1, 2] = 5.0
    offsets = torch.zeros(1, 2, 2, 3)
    offsets[0, :, 0, 1] = torch.tensor([1.5, -1.0])
    offsets[0, :, 1, 2] = torch.tensor([6.0, 6.0])  # would leave a 7×11 input
    heads = decode_heads(ModelOutput(logits, offsets=offsets), (7, 11), CountRule(0.0))
    np.testing.assert_allclose(heads.points, [[7.5, 1.0], [11.0, 7.0]])
    plain = decode_heads(ModelOutput(logits), (7, 11), CountRule(0.0))
    np.testing.assert_allclose(plain.points, [[6.0, 2.0], [9.5, 5.5]])  # border cells: inside


def test_the_model_returns_offsets_on_the_logit_grid() -> None:
    cfg = ModelConfig(weights=None, neck_channels=16, head_channels=16, offset_head=True)
    out = build_model(cfg).eval()(torch.rand(1, 3, 50, 70))
    assert out.offsets is not None and out.offsets.shape == (1, 2, 13, 18)


@pytest.fixture(scope="module")
def stage1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tiny_crowd(tmp_path_factory.mktemp("s4"), images=4, labeled=4)
    assert main(["train", *tiny_train_overrides(root, "stage1"), *SHORT]) == EXIT_OK
    return root


def test_stage4_trains_only_the_offset_head(stage1: Path) -> None:
    overrides = [
        *tiny_train_overrides(stage1, "stage4"),
        *SHORT,
        "stage=4",
        "optim.lr=0.01",
        "teacher.warmup_epochs=100",
        f"offset.init={stage1 / 'runs' / 'stage1'}",
    ]
    assert main(["train", *overrides]) == EXIT_OK
    before, _ = load_trained_model(stage1 / "runs" / "stage1")
    after, cfg = load_trained_model(stage1 / "runs" / "stage4")
    assert cfg.stage == 4 and cfg.model.offset_head and after.offset_head is not None
    old = before.state_dict()
    for key, value in after.state_dict().items():
        if key.startswith("offset_head."):
            continue
        assert torch.equal(value, old[key]), key
    assert any(p.abs().sum() > 0 for p in after.offset_head.predict.parameters())
    records = [json.loads(x) for x in (stage1 / "runs" / "stage4" / "metrics.jsonl").open()]
    assert all(r["positives"] > 0 and r["semi"] == 0.0 for r in records)


def test_stage1_fine_tunes_the_counter_of_an_earlier_model(stage1: Path) -> None:
    """``init`` (Stage 1): the student starts from the counter of a run or model folder, takes
    its architecture (not the recipe's) and leaves its mask and offset heads out."""
    exported = stage1 / "exported"
    assert main(["model", "export", str(stage1 / "runs" / "stage1"), str(exported)]) == EXIT_OK
    overrides = [
        *tiny_train_overrides(stage1, "finetune"),
        *SHORT,
        "model.neck_channels=8",
        "optim.lr=0",
        "optim.backbone_lr=0",
        f"init={exported}",
    ]
    assert main(["train", *overrides]) == EXIT_OK
    before, _ = load_trained_model(stage1 / "runs" / "stage1")
    after, cfg = load_trained_model(stage1 / "runs" / "finetune")
    assert cfg.model.neck_channels == 16 and not cfg.model.offset_head
    old = dict(before.named_parameters())
    for key, value in after.named_parameters():
        assert torch.equal(value, old[key]), key
    bad = [*tiny_train_overrides(stage1, "bad"), *SHORT, f"init={stage1 / 'nothing'}"]
    assert main(["train", *bad]) != EXIT_OK
