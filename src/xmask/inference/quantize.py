"""A model folder's network as an int8 ONNX graph, for the ``onnx-int8`` backend: static
quantisation calibrated on images of the scenes the model will see.

Quantisation
    onnxruntime's static quantisation in the QDQ format: weights int8 per output channel,
    activations uint8 with ranges from the minimum and maximum each tensor takes over the
    calibration images (:data:`METHOD`). The float graph is the one ``--format onnx`` writes
    (:func:`~xmask.inference.onnx_backend.onnx_bytes`, BatchNorm folded), exported in memory,
    first prepared by onnxruntime's ``quant_pre_process`` (shape inference and graph
    optimisation), then its zero pads folded into the convolutions that read them
    (:func:`fold_pads`: a third less network time at the same counts). The last convolution
    of the count and offset heads and what follows it stay float (:func:`float_tails`): a
    uint8 logit moves in steps of about 0.2 (the count rule's thresholds differ by 0.1 to
    0.35), and a uint8 offset before ``8·tanh`` moved a head in steps of 1.3 px, whole cells of
    the locating precision the offset head is for. They are a small part of the time.

Calibration images
    Image files in a folder (sorted by name; at most ``count`` of them, evenly spaced over the
    listing), each sized as the model's scale rule sizes its first pass
    (:meth:`~xmask.inference.scale.ScaleRule.first_scale`), so that activation ranges are those
    of inference. A file that cannot be read is skipped with a warning naming it.

The card
    :func:`write_int8` records the file as the card's ``int8`` entry: ``file``, ``sha256``,
    ``opset``, ``method``, ``calibration_images`` (how many) and ``calibration`` (what they are:
    a name given, else the folder's own name; never a path). The
    predictor checks the SHA-256 on loading, as for every file of a model folder. Whether the
    counts hold is measured, not assumed: ``benchmarks/int8_accuracy.py`` reports the MAE of the
    torch, onnx and onnx-int8 backends on one test set.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from xmask.data.files import atomic_write_bytes
from xmask.data.image_io import IMAGE_SUFFIXES, load_image
from xmask.errors import DataError, UsageError
from xmask.inference.model_folder import (
    INT8_FILE,
    checked_file,
    load_model_folder,
    sha256_of,
    update_card,
)
from xmask.inference.onnx_backend import INPUT, OPSET, import_optional, onnx_bytes
from xmask.inference.scale import ONE_PASS, ScaleRule, resize_tensor, scaled_size
from xmask.inference.tiling import image_tensor

log = logging.getLogger(__name__)

FLOAT_OUTPUTS = ("logits", "offsets")
"""Graph outputs computed in float from their head's last convolution on (:func:`float_tails`)."""


CALIBRATION_IMAGES = 32
"""Calibration images used by default (at most)."""


METHOD = (
    "onnxruntime static QDQ: int8 weights per channel, uint8 activations, min-max ranges; "
    "the count and offset heads' last convolutions float"
)


def calibration_files(folder: str | Path, count: int = CALIBRATION_IMAGES) -> list[Path]:
    """At most ``count`` image files of ``folder``, evenly spaced over its sorted listing.

    Raises:
        UsageError: ``count < 1``, or ``folder`` is not a folder or holds no image file.
    """
    folder = Path(folder).expanduser()
    if count < 1:
        raise UsageError(f"the calibration needs at least 1 image, got {count}")
    if not folder.is_dir():
        raise UsageError(f"calibration images: {folder} is not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UsageError(f"calibration images: no image file in {folder}")
    picks = np.unique(np.linspace(0, len(files) - 1, min(count, len(files))).round().astype(int))
    return [files[i] for i in picks]


def calibration_inputs(files: list[Path], rule: ScaleRule = ONE_PASS) -> list[np.ndarray]:
    """The network inputs of the first pass over ``files``: ``1×3×h×w float32`` in ``[0, 1]``,
    each sized by ``rule``. Unreadable files are skipped with a warning.

    Raises:
        UsageError: no file could be read.
    """
    inputs = []
    for path in files:
        try:
            image = load_image(path).array
        except DataError as err:
            log.warning("calibration: skipped %s (%s)", path, err)
            continue
        size = scaled_size(image.shape[:2], rule.first_scale(image.shape[:2]))
        inputs.append(resize_tensor(image_tensor(image, "cpu"), size).numpy())
    if not inputs:
        raise UsageError("calibration: none of the images could be read")
    return inputs


def quantize_graph(graph: bytes, inputs: list[np.ndarray], out: str | Path) -> Path:
    """Write the int8 copy of the float ONNX graph ``graph`` (its bytes) to ``out``
    (atomically), calibrated on ``inputs`` (module docstring).

    Raises:
        MissingDependencyError: onnxruntime is not installed.
    """
    quantization = import_optional(
        "onnxruntime.quantization", "int8 quantisation needs onnxruntime"
    )
    shape_inference = import_optional(
        "onnxruntime.quantization.shape_inference", "int8 quantisation needs onnxruntime"
    )
    feeds = iter([{INPUT: x} for x in inputs])

    class Reader(quantization.CalibrationDataReader):
        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(feeds, None)

    with tempfile.TemporaryDirectory(prefix="xmask-int8-") as work:
        source = Path(work) / "float.onnx"
        prepared, quantized = Path(work) / "prepared.onnx", Path(work) / "int8.onnx"
        source.write_bytes(graph)
        shape_inference.quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        onnx = import_optional("onnx", "int8 quantisation needs onnx")
        graph_proto = onnx.load(str(prepared))
        log.info("folded %d zero pads into their convolutions", fold_pads(graph_proto))
        onnx.save(graph_proto, str(prepared))
        tails = float_tails(graph_proto, FLOAT_OUTPUTS)
        quantization.quantize_static(
            str(prepared),
            str(quantized),
            Reader(),
            quant_format=quantization.QuantFormat.QDQ,
            activation_type=quantization.QuantType.QUInt8,
            weight_type=quantization.QuantType.QInt8,
            per_channel=True,
            calibrate_method=quantization.CalibrationMethod.MinMax,
            nodes_to_exclude=tails,
        )
        out = Path(out)
        atomic_write_bytes(out, quantized.read_bytes(), durable=True)
    return out


def float_tails(model: Any, outputs: tuple[str, ...]) -> list[str]:
    """Names of the nodes that make each of ``outputs`` from the last ``Conv`` before it,
    that ``Conv`` included (``model``: an ``onnx.ModelProto``), found by walking back from the
    output through each node's first computed input. An output reached without a ``Conv``
    within 16 nodes, or absent, adds nothing.
    """
    graph = model.graph
    producer = {name: node for node in graph.node for name in node.output}
    present = {out.name for out in graph.output}
    names: list[str] = []
    for output in outputs:
        tail: list[str] = []
        node = producer.get(output) if output in present else None
        while node is not None and len(tail) < 16:
            tail.append(node.name)
            if node.op_type == "Conv":
                names += tail
                break
            node = next((producer[i] for i in node.input if i in producer), None)
    return names


def fold_pads(model: Any) -> int:
    """Fold each zero ``Pad`` of constant spatial pads whose only reader is a ``Conv`` into that
    convolution's ``pads`` attribute, in place (``model``: an ``onnx.ModelProto``).

    The "SAME" convolutions of EfficientNet-Lite pad stride-2 inputs asymmetrically, which
    the exported graph does with a ``Pad`` node (:mod:`xmask.models.efficientnet_lite`).
    Left in, the quantised graph dequantises, pads in float and quantises again around it;
    folded, the int8 convolution pads on its own.

    Returns:
        How many ``Pad`` nodes were folded.
    """
    onnx = import_optional("onnx", "int8 quantisation needs onnx")
    graph = model.graph
    constants = {init.name: init for init in graph.initializer}
    readers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {out.name for out in graph.output}
    folded = []
    for pad in graph.node:
        if pad.op_type != "Pad" or pad.output[0] in outputs or pad.input[1] not in constants:
            continue
        modes = [a.s for a in pad.attribute if a.name == "mode"]
        zero_value = len(pad.input) < 3 or pad.input[2] == ""
        after = readers.get(pad.output[0], [])
        if modes not in ([], [b"constant"]) or not zero_value or len(after) != 1:
            continue
        conv = after[0]
        pads = onnx.numpy_helper.to_array(constants[pad.input[1]]).tolist()
        if (
            conv.op_type != "Conv"
            or len(pads) != 8
            or min(pads) < 0
            or any(pads[i] for i in (0, 1, 4, 5))
        ):
            continue
        attributes = {a.name: a for a in conv.attribute}
        auto_pad = attributes["auto_pad"].s if "auto_pad" in attributes else b"NOTSET"
        if auto_pad not in (b"", b"NOTSET"):
            continue
        old = list(attributes["pads"].ints) if "pads" in attributes else [0, 0, 0, 0]
        new = [old[0] + pads[2], old[1] + pads[3], old[2] + pads[6], old[3] + pads[7]]
        if "pads" in attributes:
            conv.attribute.remove(attributes["pads"])
        conv.attribute.append(onnx.helper.make_attribute("pads", new))
        conv.input[0] = pad.input[0]
        folded.append(pad)
    for pad in folded:
        graph.node.remove(pad)
    still_read = {name for node in graph.node for name in node.input}
    for pad in folded:
        if pad.input[1] not in still_read and pad.input[1] in constants:
            graph.initializer.remove(constants.pop(pad.input[1]))
    return len(folded)


def write_int8(
    folder: str | Path,
    calibration: str | Path,
    count: int = CALIBRATION_IMAGES,
    name: str | None = None,
) -> Path:
    """Quantise a model folder's network into ``model.int8.onnx`` beside its card, calibrated
    on at most ``count`` images of the folder ``calibration``, and record it in the card
    (``name``: what the images are, for the card; default: the folder's name).

    Returns:
        The int8 file.

    Raises:
        UsageError: bad calibration images.
        CheckpointError: not a loadable model folder.
        MissingDependencyError: onnx or onnxruntime is not installed.
    """
    folder = Path(folder).expanduser()
    model, card = load_model_folder(folder)
    inputs = calibration_inputs(calibration_files(calibration, count), card.scale or ONE_PASS)
    log.info("quantising the network of %s on %d calibration images", folder, len(inputs))
    path = quantize_graph(onnx_bytes(model), inputs, folder / INT8_FILE)
    entry = {"file": INT8_FILE, "sha256": sha256_of(path), "opset": OPSET, "method": METHOD}
    about = name or Path(calibration).expanduser().resolve().name
    update_card(folder, int8=entry | {"calibration_images": len(inputs), "calibration": about})
    log.info("wrote %s", path)
    return path


def folder_int8(folder: Path, entry: dict[str, Any] | None) -> Path:
    """The checked int8 graph of a model folder whose card's ``int8`` entry is ``entry``.

    Raises:
        UsageError: the folder has none.
        CheckpointError: the file differs from the card.
    """
    if entry is None:
        raise UsageError(
            f"{folder} has no int8 graph: xmask model export {folder} DEST --int8 "
            "--calibration IMAGES"
        )
    return checked_file(folder, entry, INT8_FILE, "int8 ONNX")
