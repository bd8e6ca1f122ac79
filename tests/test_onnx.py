"""The onnx backend: export (model folders, the CLI), parity with the torch backend on synthetic
and ShanghaiTech images, the card's ONNX entry, and a missing onnxruntime."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY, make_run, tiny_crowd
from xmask.data.synthetic import make_crowd
from xmask.errors import MissingDependencyError, UsageError
from xmask.inference.checkpoint import CheckpointError
from xmask.inference.count_rule import CountRule
from xmask.inference.loading import export_model
from xmask.inference.model_folder import CARD_FILE, ONNX_FILE, read_model_card, sha256_of
from xmask.inference.onnx_backend import Parity, onnx_bytes, parity
from xmask.inference.predictor import Predictor
from xmask.inference.tiling import image_tensor
from xmask.models import ModelConfig, XMaskModel, build_model

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def model() -> XMaskModel:
    """A tiny random model with mask and offset heads."""
    torch.manual_seed(0)
    return build_model(ModelConfig(**TINY, mask_head=True, offset_head=True)).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder with ``model.onnx``, written from a run by ``export_model``."""
    root = tmp_path_factory.mktemp("onnx")
    run = make_run(root, crowd=tiny_crowd(root / "crowd", images=3, labeled=2))
    return export_model(run, root / "tiny", onnx=True)


def _clear_threshold(model: XMaskModel, image: np.ndarray) -> float:
    """A logit threshold that about 10 % of the cells pass, in the middle of a gap of at least
    0.01 between two logits (no cell is within float rounding of it)."""
    with torch.inference_mode():
        logits = np.sort(model(image_tensor(image, "cpu")).logits.ravel().numpy())[::-1]
    gaps = np.diff(-logits)
    start = len(logits) // 10
    k = start + int(np.argmax(gaps[start:] > 0.01))
    return float(logits[k] + logits[k + 1]) / 2


def _check(agreement: Parity) -> None:
    assert agreement.counts[0] == agreement.counts[1]
    assert agreement.point_shift <= 0.5
    assert agreement.mean_iou >= 0.99


def test_tiny_model_agrees_with_torch_whole_and_in_tiles(model: XMaskModel) -> None:
    for height, width, tiles in ((70, 98, False), (96, 129, False), (150, 170, True)):
        crowd = make_crowd(height, width, 20, seed=height)
        rule = CountRule(_clear_threshold(model, crowd.image))
        tiling = {"max_pixels": 64 * 64, "tile": 64, "overlap": 16} if tiles else {}
        reference = Predictor(model, "cpu", rule, **tiling)(crowd.image)
        onnx = Predictor(model, "cpu", rule, backend="onnx", **tiling)
        prediction = onnx(crowd.image)
        assert prediction.count > 0 and (prediction.tiles > 1) == tiles
        _check(parity(reference, prediction))
        given = np.array([[5.0, 7.0], [width - 1.0, height - 1.0]], np.float32)
        torch_given = Predictor(model, "cpu", rule, **tiling).segment_points(crowd.image, given)
        _check(parity(torch_given, onnx.segment(given)))


def test_export_is_deterministic(model: XMaskModel) -> None:
    assert onnx_bytes(model) == onnx_bytes(model)


def test_model_folder_records_and_checks_its_onnx_file(exported: Path, tmp_path: Path) -> None:
    card = read_model_card(exported)
    assert card.onnx is not None and card.onnx["file"] == ONNX_FILE
    assert card.onnx["sha256"] == sha256_of(exported / ONNX_FILE)
    assert card.onnx["outputs"] == ["logits", "embedding"]
    predictor = Predictor.load(exported, "cpu", backend="onnx")
    assert predictor.onnx is not None and predictor.onnx.sha256 == card.onnx["sha256"]
    tampered = export_model(exported, tmp_path / "tampered")
    data = bytearray((tampered / ONNX_FILE).read_bytes())
    data[-10] ^= 0xFF
    (tampered / ONNX_FILE).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum differs"):
        Predictor.load(tampered, "cpu", backend="onnx")


@pytest.mark.parametrize("file", ["../model.onnx", "/tmp/model.onnx", "..", "sub\\model.onnx"])
def test_an_onnx_entry_outside_the_folder_is_refused(
    exported: Path, tmp_path: Path, file: str
) -> None:
    folder = export_model(exported, tmp_path / "escape")
    content = json.loads((folder / CARD_FILE).read_text())
    content["onnx"]["file"] = file
    (folder / CARD_FILE).write_text(json.dumps(content))
    with pytest.raises(CheckpointError, match="not a plain file name inside the model folder"):
        read_model_card(folder)


def test_export_of_a_model_folder(exported: Path, tmp_path: Path) -> None:
    copy = export_model(exported, tmp_path / "plain")
    plain = tmp_path / "plain-no-onnx"
    content = json.loads((copy / CARD_FILE).read_text())
    del content["onnx"]
    plain.mkdir()
    (plain / CARD_FILE).write_text(json.dumps(content))
    (plain / "weights.safetensors").write_bytes((copy / "weights.safetensors").read_bytes())
    assert read_model_card(plain).onnx is None
    export_model(plain, plain, onnx=True)  # in place
    assert read_model_card(plain).onnx == read_model_card(exported).onnx
    with pytest.raises(UsageError, match="options of a training run"):
        export_model(exported, tmp_path / "other", description="x")
    with pytest.raises(UsageError, match="installed model"):
        export_model("shanghaitech-lite0", Predictor.load(None, "cpu").source, onnx=True)


def test_cli_export_and_predict_with_the_onnx_backend(
    exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from xmask.cli import main

    run = exported.parent / "run"
    folder = tmp_path / "cli-model"
    assert main(["model", "export", str(run), str(folder), "--format", "onnx", "--half"]) == 0
    assert (folder / ONNX_FILE).is_file() and read_model_card(folder).onnx is not None
    crowd = exported.parent / "crowd"
    results = {}
    for backend in ("torch", "onnx"):
        out = tmp_path / "predict"  # one folder: the backend is part of what a re-run compares
        args = ["predict", str(crowd), "--model", str(folder), "--out", str(out)]
        assert main([*args, "--device", "cpu", "--backend", backend, "--threshold", "-2"]) == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["predicted"] == 3 and summary["already_done"] == 0
        results[backend] = {
            p.name: json.loads(p.read_text()) for p in (out / "predictions").glob("*.json")
        }
    capsys.readouterr()
    for name, onnx in results["onnx"].items():
        torch_result = results["torch"][name]
        assert onnx["count"] == torch_result["count"]
        shift = np.abs(np.array(onnx["points"]) - np.array(torch_result["points"]))
        assert shift.max(initial=0.0) <= 0.5


def test_a_missing_onnxruntime_is_a_clear_error(
    model: XMaskModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingDependencyError, match=r"xmask-crowd\[onnx\]"):
        Predictor(model, "cpu", backend="onnx")
    with pytest.raises(UsageError, match="backend must be one of"):
        Predictor(model, "cpu", backend="tensorrt")


def test_shipped_model_agrees_on_shanghaitech(shanghaitech: Path) -> None:
    images = sorted((shanghaitech / "part_B" / "test_data" / "images").glob("*.jpg"))[:3]
    reference = Predictor.load(None, "cpu")
    onnx = Predictor.load(None, "cpu", backend="onnx")
    for path in images:
        image = np.asarray(Image.open(path).convert("RGB"))
        _check(parity(reference(image), onnx(image)))
