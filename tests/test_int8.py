"""The onnx-int8 backend: a model folder's network quantised to int8 on calibration images,
recorded and checked in the card, copied with the folder, run by the predictor and the CLI."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_run, tiny_crowd
from xmask.cli._args import BACKEND_CHOICES
from xmask.data.synthetic import make_crowd
from xmask.errors import UsageError
from xmask.inference.checkpoint import CheckpointError
from xmask.inference.loading import export_model
from xmask.inference.model_folder import CARD_FILE, INT8_FILE, read_model_card, sha256_of
from xmask.inference.predictor import BACKENDS, Predictor
from xmask.inference.quantize import calibration_files, calibration_inputs, write_int8
from xmask.inference.scale import ScaleRule
from xmask.inference.tiling import image_tensor

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def calibration(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six synthetic crowds and one file that is not an image."""
    folder = tmp_path_factory.mktemp("calibration")
    for i in range(6):
        Image.fromarray(make_crowd(96, 128, 12, seed=40 + i).image).save(folder / f"c{i}.png")
    (folder / "c9.jpg").write_bytes(b"not an image")
    return folder


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory, calibration: Path) -> Path:
    """A model folder with model.int8.onnx (and no model.onnx)."""
    root = tmp_path_factory.mktemp("int8")
    run = make_run(root, crowd=tiny_crowd(root / "crowd", images=3, labeled=2))
    folder = export_model(run, root / "tiny")
    write_int8(folder, calibration, count=10)
    return folder


def test_the_cli_spells_the_predictor_backends() -> None:
    assert BACKEND_CHOICES == BACKENDS


def test_calibration_files_are_evenly_spaced_and_checked(calibration: Path, tmp_path: Path):
    names = [p.name for p in calibration_files(calibration, 3)]
    assert names == ["c0.png", "c3.png", "c9.jpg"]  # first, middle, last of 7 by name
    assert len(calibration_files(calibration, 100)) == 7
    with pytest.raises(UsageError, match="at least 1 image"):
        calibration_files(calibration, 0)
    with pytest.raises(UsageError, match="no image file"):
        calibration_files(tmp_path)
    with pytest.raises(UsageError, match="is not a folder"):
        calibration_files(tmp_path / "missing")


def test_calibration_inputs_are_first_passes_and_skip_bad_files(
    calibration: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        inputs = calibration_inputs(calibration_files(calibration), ScaleRule(canonical_side=64))
    assert len(inputs) == 6 and "c9.jpg" in caplog.text
    assert all(x.shape == (1, 3, 48, 64) and x.dtype == np.float32 for x in inputs)
    assert 0.0 <= min(float(x.min()) for x in inputs) <= max(float(x.max()) for x in inputs) <= 1
    with pytest.raises(UsageError, match="none of the images"):
        calibration_inputs([calibration / "c9.jpg"])


def test_the_card_records_and_checks_the_int8_graph(
    quantized: Path, calibration: Path, tmp_path: Path
) -> None:
    card = read_model_card(quantized)
    entry = card.int8
    assert card.onnx is None and entry["file"] == INT8_FILE
    assert entry["sha256"] == sha256_of(quantized / INT8_FILE)
    assert entry["calibration_images"] == 6 and "int8" in entry["method"]
    assert entry["calibration"] == calibration.name  # a name, never a path
    graph = onnx.load(str(quantized / INT8_FILE))
    ops = {node.op_type for node in graph.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8 = [t for t in graph.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert int8  # the convolution weights are stored as int8
    copy = export_model(quantized, tmp_path / "copy")  # a copy takes the int8 file along
    assert (copy / INT8_FILE).read_bytes() == (quantized / INT8_FILE).read_bytes()
    Predictor.load(copy, "cpu", backend="onnx-int8")
    data = bytearray((copy / INT8_FILE).read_bytes())
    data[-10] ^= 0xFF
    (copy / INT8_FILE).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum differs"):
        Predictor.load(copy, "cpu", backend="onnx-int8")
    content = json.loads((quantized / CARD_FILE).read_text())
    content["int8"]["file"] = "../model.int8.onnx"
    (copy / CARD_FILE).write_text(json.dumps(content))
    with pytest.raises(CheckpointError, match="not a plain file name inside the model folder"):
        read_model_card(copy)


def test_the_int8_network_follows_the_float_one(quantized: Path) -> None:
    image = make_crowd(96, 128, 12, seed=7).image
    float_net = Predictor.load(quantized, "cpu", backend="onnx").network
    int8_net = Predictor.load(quantized, "cpu", backend="onnx-int8").network
    x = image_tensor(image, "cpu")
    a, b = float_net(x), int8_net(x)
    assert b.logits.shape == a.logits.shape and b.embedding.shape == a.embedding.shape
    spread = float(a.logits.max() - a.logits.min())
    assert float((a.logits - b.logits).abs().max()) < 0.1 * spread
    assert float(torch.corrcoef(torch.stack([a.logits.ravel(), b.logits.ravel()]))[0, 1]) > 0.98
    assert not torch.equal(a.logits, b.logits)  # it is another graph


def test_onnx_int8_needs_its_file(quantized: Path, tmp_path: Path) -> None:
    plain = export_model(quantized.parent / "run", tmp_path / "plain", onnx=True)
    assert read_model_card(plain).int8 is None
    with pytest.raises(UsageError, match="has no int8 graph"):
        Predictor.load(plain, "cpu", backend="onnx-int8")
    with pytest.raises(UsageError, match="needs the int8 graph"):
        Predictor(Predictor.load(plain, "cpu").model, "cpu", backend="onnx-int8")
    export_model(plain, plain, onnx=True)  # exporting ONNX again keeps an int8 entry alone
    write_int8(plain, quantized.parent / "crowd", count=2)
    export_model(plain, plain, onnx=True)
    assert read_model_card(plain).int8 is not None
    Predictor.load(plain, "cpu", backend="onnx-int8")


def test_cli_exports_int8_and_predicts_with_it(
    quantized: Path, calibration: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from xmask.cli import main

    run, folder = quantized.parent / "run", tmp_path / "cli-int8"
    args = ["model", "export", str(run), str(folder), "--int8"]
    given = ["--calibration", str(calibration), "--calibration-images", "3"]
    assert main([*args, *given, "--calibration-name", "synthetic crowds"]) == 0
    # c0, c3 and c9 are picked; c9 is not an image
    assert read_model_card(folder).int8["calibration_images"] == 2
    assert read_model_card(folder).int8["calibration"] == "synthetic crowds"
    assert main([*args[:-1], "--int8"]) == 1  # no --calibration
    assert "--int8 needs --calibration DIR" in caplog.text
    out = tmp_path / "predict"
    crowd = quantized.parent / "crowd"
    predict = ["predict", str(crowd), "--model", str(folder), "--out", str(out)]
    assert main([*predict, "--device", "cpu", "--backend", "onnx-int8"]) == 0
    assert json.loads((out / "summary.json").read_text())["predicted"] == 3


def test_shipped_model_int8_counts_like_float_on_shanghaitech(
    shanghaitech: Path, tmp_path: Path
) -> None:
    train = shanghaitech / "part_B" / "train_data" / "images"
    folder = export_model("shanghaitech-lite0", tmp_path / "shipped")
    write_int8(folder, train, count=4)
    images = sorted((shanghaitech / "part_B" / "test_data" / "images").glob("*.jpg"))[:3]
    reference = Predictor.load(folder, "cpu")
    int8 = Predictor.load(folder, "cpu", backend="onnx-int8")
    for path in images:
        image = np.asarray(Image.open(path).convert("RGB"))
        want, got = reference(image).count, int8(image).count
        assert abs(got - want) <= max(3, 0.1 * want), (path.name, want, got)
