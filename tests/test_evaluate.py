"""Evaluation: exact metrics with a controlled model, tiling equivalence, the CLI end to end."""

from __future__ import annotations

import csv
import itertools
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as nnf

from xmask.cli import EXIT_ERROR, EXIT_OK, EXIT_SKIPPED, main
from xmask.data.readers import open_dataset
from xmask.data.synthetic import make_crowd_folder
from xmask.evaluation.evaluate import evaluate_model, format_result
from xmask.geometry.points import pixel_of
from xmask.inference.checkpoint import Checkpoint, save_checkpoint
from xmask.inference.count_rule import CountRule
from xmask.inference.tiling import check_tiling, image_tensor, predict_outputs, tile_spans
from xmask.models.model import ModelConfig, build_model
from xmask.train.config import DataConfig, TrainConfig, to_yaml
from xmask.types import ModelOutput, Sample


class MarkerModel(nn.Module):
    """Logit > 0 exactly at the stride-4 cells holding a pixel whose red value is 1."""

    def forward(self, images: torch.Tensor) -> ModelOutput:
        red = images[:, :1]
        return ModelOutput(logits=nnf.max_pool2d(red, 4, 4, ceil_mode=True) - 0.5)


class LocalModel(nn.Module):
    """A random two-layer conv net whose cell sees only pixels within 4 px of it (float64)."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.w1 = nn.Parameter(torch.randn(4, 3, 3, 3, generator=gen, dtype=torch.float64))
        self.w2 = nn.Parameter(torch.randn(1, 4, 7, 7, generator=gen, dtype=torch.float64) / 5)

    def forward(self, images: torch.Tensor) -> ModelOutput:
        h, w = images.shape[-2:]
        x = nnf.pad(images.double(), (0, -w % 4, 0, -h % 4))
        x = torch.tanh(nnf.conv2d(x - 0.5, self.w1, padding=1))
        return ModelOutput(logits=nnf.conv2d(x, self.w2, stride=4, padding=3))


@pytest.mark.parametrize(("tile", "overlap"), [(1024, 128), (64, 32), (48, 16), (32, 0)])
def test_tile_spans_partition_every_cell_once(tile: int, overlap: int) -> None:
    for length in (1, 15, 31, 32, 33, 64, 65, 100, 203, 1024, 1025, 2000, 3001, 5000):
        spans = tile_spans(length, tile, overlap)
        assert spans[0].start == 0 and spans[-1].end == length
        assert spans[0].keep_start == 0 and spans[-1].keep_end == length
        for a, b in itertools.pairwise(spans):
            assert a.keep_end == b.keep_start and a.keep_end % 4 == 0
            assert b.start % 16 == 0 and a.start < b.start
            assert b.keep_start - b.start >= overlap // 2 and a.end - a.keep_end >= overlap // 2
        for s in spans:
            assert s.start <= s.keep_start < s.keep_end <= s.end
            assert s.end - s.start <= max(tile + 15, length if len(spans) == 1 else 0)


def test_check_tiling_rejects_bad_values() -> None:
    for tile, overlap in ((1000, 64), (1024, 72), (64, 64), (64, -16)):
        with pytest.raises(ValueError, match="multiples of 16"):
            check_tiling(tile, overlap)


@pytest.mark.parametrize("size", [(150, 203), (97, 300), (64, 64), (260, 33)])
def test_tiled_logits_equal_untiled_for_a_local_model(size: tuple[int, int]) -> None:
    model = LocalModel().eval()
    gen = torch.Generator().manual_seed(size[0])
    image = torch.rand(1, 3, *size, generator=gen)
    with torch.inference_mode():
        whole_out, one = predict_outputs(model, image, max_pixels=None)
        tiled_out, tiles = predict_outputs(model, image, max_pixels=100, tile=48, overlap=16)
    whole, tiled = whole_out.logits, tiled_out.logits
    assert one == 1 and tiles == len(tile_spans(size[0], 48, 16)) * len(tile_spans(size[1], 48, 16))
    assert whole.shape == (1, 1, math.ceil(size[0] / 4), math.ceil(size[1] / 4))
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-12)
    assert int((tiled > 0).sum()) == int((whole > 0).sum()) > 0


def _mark(path: Path, points: np.ndarray, size: tuple[int, int]) -> None:
    """Overwrite an image with black, red value 255 at the pixel of every point."""
    image = np.zeros((*size, 3), dtype=np.uint8)
    cols, rows = pixel_of(points, size).T if len(points) else (np.zeros(0, int),) * 2
    image[rows, cols, 0] = 255
    Image.fromarray(image).save(path)


def _far_cells(gt: np.ndarray, size: tuple[int, int], k: int) -> np.ndarray:
    """Centres of ``k`` stride-4 cells more than 8 px from every ground-truth point."""
    h, w = size
    ys, xs = np.mgrid[0 : math.ceil(h / 4), 0 : math.ceil(w / 4)]
    centres = np.stack([xs.ravel() * 4 + 2, ys.ravel() * 4 + 2], axis=1).astype(float)
    centres = centres[(centres[:, 0] < w) & (centres[:, 1] < h)]
    if len(gt):
        far = np.min(np.hypot(*(centres[:, None] - gt[None]).transpose(2, 0, 1)), axis=1) > 8.5
        centres = centres[far]
    return centres[:k]


@pytest.fixture
def marked_folder(tmp_path: Path) -> tuple[Path, dict[str, dict[str, int]]]:
    """Synthetic crowds whose images mark most heads plus a few false heads far from any.

    Returns the folder and, per image, the exact expected ``gt``, ``pred``, ``tp``, ``fp`` and
    ``fn`` of :class:`MarkerModel`, the same at 4 and 8 px: a marked cell's centre lies within
    2√2 px of the marked head, false heads lie more than 8 px from every head, so the
    maximum matching pairs every cell of a marked head and nothing else.
    """
    size = (64, 80)
    paths = make_crowd_folder(tmp_path, 3, height=size[0], width=size[1], n_heads=(4, 12), seed=3)
    expected = {}
    for extra, path in enumerate(paths):
        dataset = open_dataset("folder", tmp_path, "test")
        gt = dataset[dataset.names.index(path.name)].points
        fake = _far_cells(gt, size, extra)
        kept = gt[2 * extra :]  # image i misses 2i heads
        _mark(path, np.concatenate([kept, fake]), size)
        cells = {tuple(c) for c in (pixel_of(kept, size) // 4).tolist()}
        tp, fp = len(cells), len(fake)
        expected[path.name] = {"gt": len(gt), "pred": tp + fp, "tp": tp, "fp": fp}
        expected[path.name]["fn"] = len(gt) - tp
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (tmp_path / "broken.txt").write_text("1 1\n")
    return tmp_path, expected


def test_evaluate_model_exact_metrics(
    marked_folder: tuple[Path, dict[str, dict[str, int]]],
) -> None:
    root, expected = marked_folder
    dataset = open_dataset("folder", root, "test")
    model = MarkerModel().train()
    result = evaluate_model(model, dataset, "cpu", progress=False)
    assert model.training, "the model's train/eval mode is restored"
    assert [s["name"] for s in result.skipped] == ["broken.png"]
    assert "broken.png" in result.skipped[0]["problem"]
    rows = {r.name: r for r in result.rows}
    assert set(rows) == set(expected)
    errors = []
    for name, e in expected.items():
        row = rows[name]
        assert (row.gt_count, row.pred_count, row.tiles) == (e["gt"], e["pred"], 1)
        for sigma in (4.0, 8.0):
            m = row.matches[sigma]
            assert (m.tp, m.fp, m.fn) == (e["tp"], e["fp"], e["fn"])
        errors.append(e["pred"] - e["gt"])
    assert any(errors), "the fixture must produce counting errors"
    assert result.images == 3
    assert result.mae == pytest.approx(np.mean(np.abs(errors)))
    assert result.rmse == pytest.approx(np.sqrt(np.mean(np.square(errors))))
    tp = sum(e["tp"] for e in expected.values())
    fp = sum(e["fp"] for e in expected.values())
    fn = sum(e["fn"] for e in expected.values())
    summary = result.to_dict()
    assert summary["images"] == 3 and summary["mae"] == pytest.approx(result.mae)
    for key in ("4", "8"):
        loc = summary["localisation"][key]
        assert (loc["tp"], loc["fp"], loc["fn"]) == (tp, fp, fn)
        assert loc["precision"] == pytest.approx(tp / (tp + fp))
        assert loc["recall"] == pytest.approx(tp / (tp + fn))
        assert loc["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    json.dumps(summary)
    assert "MAE" in format_result(result)

    tiled = evaluate_model(
        MarkerModel(), dataset, "cpu", max_pixels=1000, tile=32, overlap=16, progress=False
    )
    assert all(r.tiles == 3 * 4 for r in tiled.rows)  # 64×80 px: 3 rows, 4 columns of tiles
    assert [(r.name, r.pred_count, r.matches) for r in tiled.rows] == [
        (r.name, r.pred_count, r.matches) for r in result.rows
    ]


def test_write_csv(marked_folder: tuple[Path, dict[str, dict[str, int]]], tmp_path: Path) -> None:
    root, expected = marked_folder
    result = evaluate_model(MarkerModel(), open_dataset("folder", root), "cpu", progress=False)
    path = tmp_path / "out" / "rows.csv"
    result.write_csv(path)
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["name"] for r in rows] == [r.name for r in result.rows]
    for r in rows:
        e = expected[r["name"]]
        assert (int(r["gt_count"]), int(r["pred_count"])) == (e["gt"], e["pred"])
        assert int(r["abs_error"]) == abs(e["pred"] - e["gt"])
        assert (int(r["tp_8"]), int(r["fp_4"]), int(r["fn_4"])) == (e["tp"], e["fp"], e["fn"])


def test_thresholds_are_in_original_pixels() -> None:
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    image[9, 9, 0] = 255  # predicted point: centre (10, 10) of cell (2, 2)
    gt = np.array([[13.0, 10.0]], dtype=np.float32)  # 3 px away in the evaluated image
    samples = [
        Sample(image=image, points=gt, name="full"),
        Sample(image=image, points=gt, name="half", scale=0.5),  # 6 px in the original
    ]
    result = evaluate_model(MarkerModel(), samples, "cpu", progress=False)
    full, half = result.rows
    assert (full.matches[4.0].tp, full.matches[8.0].tp) == (1, 1)
    assert (half.matches[4.0].tp, half.matches[8.0].tp) == (0, 1)


def test_real_model_runs_tiled(marked_folder: tuple[Path, dict[str, dict[str, int]]]) -> None:
    root, _ = marked_folder
    model = build_model(ModelConfig(weights=None, neck_channels=8, head_channels=8))
    dataset = open_dataset("folder", root)
    result = evaluate_model(
        model, dataset, "cpu", max_pixels=2000, tile=48, overlap=16, progress=False
    )
    assert result.images == 3 and all(r.tiles == 4 for r in result.rows)
    assert math.isfinite(result.mae) and math.isfinite(result.rmse)


def _run_folder(tmp_path: Path, data_root: Path) -> Path:
    """A run folder written through the public config and checkpoint functions."""
    cfg = TrainConfig(
        name="run",
        out=str(tmp_path),
        model=ModelConfig(weights=None, neck_channels=8, head_channels=8),
        data=DataConfig(dataset="folder", root=str(data_root)),
    )
    run = cfg.run_dir
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(to_yaml(cfg), encoding="utf-8")
    torch.manual_seed(0)
    model = build_model(cfg.model)
    tensors = {f"teacher.{k}": v for k, v in model.state_dict().items()}
    save_checkpoint(run / "checkpoints", Checkpoint(tensors=tensors, state={"step": 0, "epoch": 0}))
    return run


def test_cli_end_to_end(
    marked_folder: tuple[Path, dict[str, dict[str, int]]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root, _ = marked_folder
    run = _run_folder(tmp_path / "runs", root)
    code = main(["evaluate", "--checkpoint", str(run), "--json", "--device", "cpu"])
    out = json.loads(capsys.readouterr().out)
    assert code == EXIT_SKIPPED  # broken.png
    assert out["images"] == 3 and out["dataset"] == "folder" and out["split"] == "test"
    assert {"mae", "rmse", "localisation", "skipped"} <= set(out)
    csv_path = run / "eval-folder-test.csv"
    assert out["csv"] == str(csv_path) and len(csv_path.read_text().splitlines()) == 4

    (root / "broken.png").unlink()
    weights = next((run / "checkpoints").glob("step-*.safetensors"))
    mine = tmp_path / "mine.csv"
    code = main(["evaluate", "--checkpoint", str(weights), "--root", str(root), "--csv", str(mine)])
    text = capsys.readouterr().out
    assert code == EXIT_OK and "MAE" in text and "σ = 8 px" in text and mine.is_file()


def test_cli_corrupt_or_missing_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, marked_folder: tuple[Path, dict]
) -> None:
    root, _ = marked_folder
    run = _run_folder(tmp_path / "runs", root)
    weights = next((run / "checkpoints").glob("step-*.safetensors"))
    weights.write_bytes(b"not a safetensors file")
    with caplog.at_level(logging.ERROR):
        assert main(["evaluate", "--checkpoint", str(run)]) == EXIT_ERROR
    assert str(weights) in caplog.text
    caplog.clear()
    missing = tmp_path / "nowhere"
    with caplog.at_level(logging.ERROR):
        assert main(["evaluate", "--checkpoint", str(missing)]) == EXIT_ERROR
    assert str(missing) in caplog.text and "not found" in caplog.text


def test_cli_labeled_and_unlabeled_subsets(
    marked_folder: tuple[Path, dict[str, dict[str, int]]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root, _ = marked_folder
    (root / "broken.png").unlink()
    run = _run_folder(tmp_path / "runs", root)
    (tmp_path / "labeled.txt").write_text("syn_0001.png\n")
    common = ["evaluate", "--checkpoint", str(run), "--json", "--device", "cpu"]
    assert main([*common, "--labeled", str(tmp_path / "labeled.txt")]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["images"] == 1
    assert main([*common, "--unlabeled", str(tmp_path / "labeled.txt")]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["images"] == 2


def test_a_two_regime_rule_counts_each_image_at_its_own_threshold(tmp_path: Path) -> None:
    make_crowd_folder(tmp_path, 4, height=48, width=64, n_heads=(2, 30), seed=5)
    dataset = open_dataset("folder", tmp_path, "test")
    model = LocalModel()
    with torch.inference_mode():
        logits = [model(image_tensor(dataset[i].image, "cpu")).logits for i in range(4)]
    pixels = 48 * 64
    densities = sorted(float((lg > 0).sum()) * 10_000 / pixels for lg in logits)
    assert densities[0] < densities[-1]
    rule = CountRule(0.0, (densities[0] + densities[-1]) / 2, 0.5)
    result = evaluate_model(model, dataset, "cpu", count_threshold=rule, progress=False)
    for row, lg in zip(result.rows, logits, strict=True):
        dense = float((lg > 0).sum()) * 10_000 / pixels > rule.split
        assert row.pred_count == int((lg > (0.5 if dense else 0.0)).sum())
    summary = result.to_dict()
    assert summary["count_threshold"] == 0.0 and summary["count_rule"] == rule.describe()
