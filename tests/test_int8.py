"""The onnx-int8 backend: a model folder's network quantised to int8 on calibration images,
recorded and checked in the card, copied with the folder, run by the predictor and the CLI."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY, make_run, tiny_crowd
from xmask.cli._args import BACKEND_CHOICES
from xmask.data.synthetic import make_crowd
from xmask.errors import UsageError
from xmask.inference.checkpoint import CheckpointError
from xmask.inference.loading import export_model
from xmask.inference.model_folder import CARD_FILE, INT8_FILE, read_model_card, sha256_of
from xmask.inference.predictor import AUTO, BACKENDS, Predictor, auto_backend
from xmask.inference.quantize import (
    calibration_files,
    calibration_inputs,
    fold_pads,
    write_int8,
)
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
    assert (AUTO, *BACKENDS) == BACKEND_CHOICES


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
    summary = json.loads((out / "summary.json").read_text())
    assert summary["predicted"] == 3 and summary["backend"] == "onnx-int8"
    default = ["predict", str(crowd), "--device", "cpu", "--out", str(tmp_path / "auto")]
    assert main([*default, "--model", str(folder)]) == 0  # auto: the int8 graph on the CPU
    assert json.loads((tmp_path / "auto" / "summary.json").read_text())["backend"] == "onnx-int8"
    assert main([*default, "--model", str(run), "--force"]) == 0  # a run has no int8 graph
    assert json.loads((tmp_path / "auto" / "summary.json").read_text())["backend"] == "torch"


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


def _pad_conv_graph(
    pads: list[int], value: float | None, conv_pads: list[int], mode: str = "constant"
) -> object:
    """x ``1×2×6×7`` → Pad(``pads``, ``value``, ``mode``) → 3×3 stride-2 Conv with ``conv_pads``."""
    helper, numpy_helper = onnx.helper, onnx.numpy_helper
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(np.array(pads, np.int64), "pads"),
        numpy_helper.from_array(rng.normal(size=(3, 2, 3, 3)).astype(np.float32), "w"),
    ]
    pad_inputs = ["x", "pads"]
    if value is not None:
        inits.append(numpy_helper.from_array(np.array(value, np.float32), "value"))
        pad_inputs.append("value")
    nodes = [
        helper.make_node("Pad", pad_inputs, ["padded"], mode=mode),
        helper.make_node("Conv", ["padded", "w"], ["y"], strides=[2, 2], pads=conv_pads),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2, 6, 7])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: object, x: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    return session.run(None, {"x": x})[0]


@pytest.mark.parametrize("conv_pads", [[0, 0, 0, 0], [1, 0, 1, 2]])
def test_fold_pads_moves_a_zero_pad_into_its_convolution(conv_pads: list[int]) -> None:
    x = np.random.default_rng(1).normal(size=(1, 2, 6, 7)).astype(np.float32)
    model = _pad_conv_graph([0, 0, 1, 0, 0, 0, 2, 1], None, conv_pads)
    before = _run(model, x)
    assert fold_pads(model) == 1
    assert [n.op_type for n in model.graph.node] == ["Conv"]
    assert [i.name for i in model.graph.initializer] == ["w"]  # the pads went with the node
    np.testing.assert_allclose(_run(model, x), before, rtol=1e-5, atol=1e-5)


def test_fold_pads_leaves_pads_it_cannot_fold() -> None:
    x = np.random.default_rng(2).normal(size=(1, 2, 6, 7)).astype(np.float32)
    for value, mode in ((0.5, "constant"), (None, "reflect")):
        model = _pad_conv_graph([0, 0, 1, 0, 0, 0, 2, 1], value, [0, 0, 0, 0], mode)
        before = _run(model, x)
        assert fold_pads(model) == 0
        np.testing.assert_array_equal(_run(model, x), before)


def test_the_int8_graph_pads_inside_its_convolutions(quantized: Path) -> None:
    """Only the model's padding of its input to a multiple of 16 (its amount depends on the
    image's size) is a Pad node; the "SAME" pads of the stride-2 convolutions are constants
    folded into them."""
    graph = onnx.load(quantized / INT8_FILE).graph
    pads = [node for node in graph.node if node.op_type == "Pad"]
    assert len(pads) == 1
    readers = [node.op_type for node in graph.node if pads[0].output[0] in node.input]
    assert "Conv" not in readers


def test_auto_backend_takes_the_int8_graph_on_a_cpu_only(
    quantized: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = read_model_card(quantized).int8
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert auto_backend(cpu, entry) == "onnx-int8"
    assert auto_backend(cuda, entry) == "torch"
    assert auto_backend(cpu, None) == "torch"
    assert Predictor.load(quantized, "cpu", backend="auto").backend == "onnx-int8"
    plain = export_model(quantized.parent / "run", tmp_path / "plain")
    assert Predictor.load(plain, "cpu", backend="auto").backend == "torch"
    assert Predictor.load(quantized.parent / "run", "cpu", backend="auto").backend == "torch"
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes its import fail
    assert auto_backend(cpu, entry) == "torch"


def test_the_heads_last_layers_stay_float(tmp_path: Path) -> None:
    """The count and offset heads' last convolutions and what follows them run in float: their
    outputs take more values than the 256 of a uint8 tensor, and follow the float graph
    closely (a uint8 offset before 8·tanh moved heads in steps of about 1.3 px)."""
    import onnxruntime

    from xmask.inference.onnx_backend import INPUT, onnx_bytes
    from xmask.inference.quantize import FLOAT_OUTPUTS, float_tails, quantize_graph
    from xmask.models import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(**TINY, mask_head=True, offset_head=True)).eval()
    torch.nn.init.normal_(model.offset_head.predict.weight, std=0.05)
    graph = onnx_bytes(model)
    tails = float_tails(onnx.load_from_string(graph), FLOAT_OUTPUTS)
    assert {"/network/count_head/predict/Conv", "/network/offset_head/predict/Conv"} <= set(tails)
    assert "/network/offset_head/Tanh" in tails
    images = [make_crowd(96, 128, 12, seed=50 + i).image for i in range(4)]
    inputs = [image_tensor(image, "cpu").numpy() for image in images]
    quantize_graph(graph, inputs[:3], tmp_path / "int8.onnx")
    int8 = onnx.load(tmp_path / "int8.onnx").graph
    producer = {name: node for node in int8.node for name in node.output}
    for name in FLOAT_OUTPUTS:
        assert producer[name].op_type != "DequantizeLinear", name

    def run(source: object) -> dict[str, np.ndarray]:
        session = onnxruntime.InferenceSession(source, providers=["CPUExecutionProvider"])
        names = [out.name for out in session.get_outputs()]
        return dict(zip(names, session.run(None, {INPUT: inputs[3]}), strict=True))

    a, b = run(graph), run(str(tmp_path / "int8.onnx"))
    for name in FLOAT_OUTPUTS:
        assert np.unique(b[name]).size > 256, name
        assert np.corrcoef(a[name].ravel(), b[name].ravel())[0, 1] > 0.98, name
    quantized_outputs = {n.input[0] for n in int8.node if n.op_type == "QuantizeLinear"}
    assert "/network/mask_head/embed/Conv_output_0" in quantized_outputs  # the rest stays int8


def test_evaluate_runs_the_backend_it_is_given(
    quantized: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`xmask evaluate --backend` runs that network (the counts are an int8 predictor's), says
    which in its report, and keeps --record for torch's figures."""
    from xmask.cli import main
    from xmask.inference.onnx_backend import OnnxNetwork

    calls = []
    original = OnnxNetwork.__call__
    monkeypatch.setattr(
        OnnxNetwork, "__call__", lambda self, x: calls.append(1) or original(self, x)
    )
    crowd = quantized.parent / "crowd"
    base = ["evaluate", "--model", str(quantized), "--dataset", "folder", "--root", str(crowd)]
    base += ["--split", "train", "--device", "cpu", "--json"]
    seen = {}
    for backend in ("torch", "onnx-int8", "auto"):
        before = len(calls)
        csv = str(tmp_path / f"{backend}.csv")
        assert main([*base, "--backend", backend, "--csv", csv]) == 0
        seen[backend] = (json.loads(capsys.readouterr().out), len(calls) - before)
    assert seen["torch"][0]["backend"] == "torch" and seen["torch"][1] == 0
    for backend in ("onnx-int8", "auto"):
        report, networks = seen[backend]
        assert report["backend"] == "onnx-int8" and report["images"] == 3
        assert networks >= 3  # every image through the int8 graph (the card's rule may enlarge)
    int8 = Predictor.load(quantized, "cpu", backend="onnx-int8")
    rows = (tmp_path / "onnx-int8.csv").read_text().splitlines()
    header = rows[0].split(",")
    for row in rows[1:]:
        values = dict(zip(header, row.split(","), strict=True))
        assert int(values["pred_count"]) == int8(crowd / values["name"]).count
    assert main([*base, "--backend", "onnx-int8", "--record"]) == 1
    assert "--record stores the torch network's figures" in caplog.text
