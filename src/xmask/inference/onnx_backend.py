"""The network as an ONNX graph, run by onnxruntime: the ``onnx`` backend of the
:class:`~xmask.inference.predictor.Predictor`.

Only the network changes: the graph maps a ``1×3×H×W`` float32 image in ``[0, 1]`` (any ``H``
and ``W``: both are symbolic dimensions of the graph) to the tensors
:class:`~xmask.models.XMaskModel` returns (``logits``, and ``embedding`` and ``offsets`` for
a model with those heads), and :class:`OnnxNetwork` returns them as the same
:class:`~xmask.types.ModelOutput`. Everything after the network (tiling, the scale rule, the
count rule, decoding, segmentation) is the one code path both backends share.

Export
    :func:`onnx_bytes` traces an :func:`~xmask.models.fusion.inference_copy` of the network
    (BatchNorm folded) with ``torch.onnx.export``'s TorchScript exporter (``dynamo=False``; the
    dynamo exporter needs minutes of symbolic-shape work for EfficientNet-Lite on a CPU), at
    opset :data:`OPSET`. The network computes every size from its input with integer
    operations that stay in the graph (:func:`xmask.models.backbones.ceil_div`), so one graph
    serves every image size. :func:`write_onnx` writes ``model.onnx`` beside a model folder's
    card and records its SHA-256 there (``onnx`` entry); the predictor checks it on loading.

Parity
    :func:`parity` compares two predictions of one image (the torch and the onnx backend's):
    whether the counts are equal, how far apart the points are, and each head's mask IoU
    (``tests/test_onnx.py``, ``benchmarks/onnx_speed.py``).

Threads
    onnxruntime runs with as many intra-op threads as torch is set to use
    (``torch.get_num_threads()`` when the network is opened), the threads the torch backend
    would use; they sleep between operators instead of spinning, leaving the cores to the
    threads that segment and write while the network runs (``xmask predict --pipeline``).

onnxruntime (and ``onnx``, for exporting) come with the ``onnx`` extra; without them the
backend raises :class:`~xmask.errors.MissingDependencyError`.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from xmask.data.files import atomic_write_bytes
from xmask.errors import MissingDependencyError
from xmask.inference.checkpoint import CheckpointError
from xmask.inference.model_folder import (
    ONNX_FILE,
    checked_file,
    load_model_folder,
    sha256_of,
    update_card,
)
from xmask.inference.prediction import Prediction
from xmask.models.fusion import inference_copy
from xmask.types import ModelOutput

log = logging.getLogger(__name__)


BACKENDS = ("torch", "onnx", "onnx-int8")
"""What runs the network (:mod:`xmask.inference.predictor`, Backends)."""


AUTO = "auto"
"""The backend :meth:`Predictor.load` chooses itself (:func:`auto_backend`)."""


def auto_backend(device: torch.device, int8: dict[str, Any] | None) -> str:
    """``"onnx-int8"`` on a CPU for a model folder with an int8 graph (its card's ``int8``
    entry) when onnxruntime imports: the same counts (the card's ``int8.metrics``) in
    about half the network time; else ``"torch"``."""
    if device.type != "cpu" or int8 is None:
        return "torch"
    try:
        importlib.import_module("onnxruntime")
    except ImportError as err:  # not installed, or a build this machine cannot load
        log.info("backend auto: torch (onnxruntime, for the int8 graph, does not import: %s)", err)
        return "torch"
    return "onnx-int8"


OPSET = 17
"""The ONNX opset the graph is exported at."""


INPUT = "image"
"""The graph's input: ``1×3×H×W`` float32 RGB in ``[0, 1]``."""


OUTPUTS = ("logits", "embedding", "offsets")
"""The graph's outputs, in this order, those the network has (:class:`ModelOutput`'s fields)."""


TRACE_SIZE = (200, 264)
"""``(H, W)`` of the image the export traces (not a multiple of 16, so padding is traced)."""


class _Outputs(nn.Module):
    """The network with its :class:`ModelOutput` as a tuple of the present tensors."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.network(image)
        tensors = (getattr(out, name) for name in OUTPUTS)
        return tuple(t for t in tensors if t is not None)


def output_names(model: nn.Module) -> list[str]:
    """The :data:`OUTPUTS` a network returns (one small forward pass)."""
    with torch.inference_mode():
        out = model.eval()(torch.zeros(1, 3, 16, 16, device=_device_of(model)))
    return [name for name in OUTPUTS if getattr(out, name) is not None]


def onnx_bytes(model: nn.Module) -> bytes:
    """The network as a serialised ONNX graph (module docstring), on the CPU; ``model`` itself
    is untouched.

    Raises:
        MissingDependencyError: the ``onnx`` package is not installed.
    """
    import_optional("onnx", "exporting ONNX needs the onnx package")
    network = inference_copy(model).to("cpu", memory_format=torch.contiguous_format)
    names = output_names(network)
    axes = {INPUT: {2: "height", 3: "width"}} | {n: {2: "rows", 3: "cols"} for n in names}
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # sizes traced on purpose
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter's notice
        torch.onnx.export(
            _Outputs(network),
            (torch.rand(1, 3, *TRACE_SIZE, generator=torch.Generator().manual_seed(0)),),
            buffer,
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT],
            output_names=names,
            dynamic_axes=axes,
        )
    return buffer.getvalue()


def write_onnx(folder: str | Path) -> Path:
    """Export a model folder's network as ``model.onnx`` beside its card and record the file
    (name, SHA-256, opset, outputs) in the card; both written atomically, the card last.

    Returns:
        The ONNX file.

    Raises:
        CheckpointError: not a loadable model folder.
        MissingDependencyError: the ``onnx`` package is not installed.
    """
    folder = Path(folder).expanduser()
    model, _ = load_model_folder(folder)
    path = folder / ONNX_FILE
    atomic_write_bytes(path, onnx_bytes(model), durable=True)
    entry = {"file": ONNX_FILE, "sha256": sha256_of(path), "opset": OPSET}
    update_card(folder, onnx=entry | {"outputs": output_names(model)})
    log.info("wrote %s", path)
    return path


def folder_onnx(folder: Path, entry: dict[str, Any] | None) -> Path | None:
    """The checked ONNX file of a model folder whose card has ``entry`` as its ``onnx``, or
    None without one (:func:`~xmask.inference.model_folder.checked_file`)."""
    return None if entry is None else checked_file(folder, entry, ONNX_FILE, "ONNX")


class OnnxNetwork:
    """An ONNX graph of the network in an onnxruntime session, called like the torch network:
    ``1×3×H×W`` float tensor → :class:`~xmask.types.ModelOutput` (on the input's device).

    Args:
        graph: a ``.onnx`` file or its bytes.
        device: ``cuda`` runs on onnxruntime's CUDA provider where it has one, else the CPU.

    Raises:
        MissingDependencyError: onnxruntime is not installed.
        CheckpointError: a graph without the input and outputs of an xmask network.
    """

    def __init__(self, graph: str | Path | bytes, device: torch.device | None = None) -> None:
        ort = import_optional("onnxruntime", "the onnx backend needs onnxruntime")
        data = graph if isinstance(graph, bytes) else Path(graph).read_bytes()
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
        if device is not None and device.type == "cuda":
            if "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, "CUDAExecutionProvider")
            else:
                log.warning("onnxruntime has no CUDA provider here: the onnx backend runs on CPU")
        where = "the ONNX bytes" if isinstance(graph, bytes) else graph
        try:
            self.session = ort.InferenceSession(data, options, providers=providers)
        except Exception as err:  # onnxruntime raises its own, unexported error classes
            raise CheckpointError(where, f"not an ONNX graph onnxruntime can run ({err})") from err
        inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        if (
            inputs != [INPUT]
            or not set(self.outputs) <= set(OUTPUTS)
            or "logits" not in self.outputs
        ):
            found = f"inputs {inputs}, outputs {self.outputs}"
            raise CheckpointError(where, f"not an xmask network graph ({found})")
        self.sha256 = hashlib.sha256(data).hexdigest()
        """SHA-256 of the graph (part of a prediction's settings)."""

    def __call__(self, images: torch.Tensor) -> ModelOutput:
        """``1×3×H×W`` float in ``[0, 1]`` → the network's outputs."""
        array = np.ascontiguousarray(images.detach().to("cpu", torch.float32).numpy())
        results = self.session.run(self.outputs, {INPUT: array})
        pairs = zip(self.outputs, results, strict=True)
        return ModelOutput(**{n: torch.from_numpy(r).to(images.device) for n, r in pairs})


@dataclass(frozen=True)
class Parity:
    """How two predictions of one image agree (:func:`parity`).

    Attributes:
        counts: the two counts.
        point_shift: the largest distance in pixels between the ``k``-th points of the two
            (inf when the counts differ; 0 without heads).
        mask_ious: each head's mask IoU (``N``; empty when the counts differ or without masks).
    """

    counts: tuple[int, int]
    point_shift: float
    mask_ious: np.ndarray

    @property
    def mean_iou(self) -> float:
        """Mean of :attr:`mask_ious` (1 without heads)."""
        return float(self.mask_ious.mean()) if len(self.mask_ious) else 1.0


def parity(reference: Prediction, other: Prediction) -> Parity:
    """How ``other`` agrees with ``reference`` (two predictions of the same image)."""
    counts = (reference.count, other.count)
    if len(reference.points) != len(other.points):
        return Parity(counts, float("inf"), np.zeros(0))
    shift = np.linalg.norm(reference.points - other.points, axis=1)
    ious = np.zeros(0)
    if reference.labels is not None and other.labels is not None:
        n = len(reference.points) + 1
        a, b = reference.labels.ravel(), other.labels.ravel()
        inter = np.bincount(a[a == b], minlength=n)[1:]
        union = np.bincount(a, minlength=n)[1:] + np.bincount(b, minlength=n)[1:] - inter
        ious = inter / np.maximum(union, 1)
    return Parity(counts, float(shift.max(initial=0.0)), ious)


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def import_optional(name: str, what: str) -> Any:
    """``import name``, or :class:`~xmask.errors.MissingDependencyError` (the ``onnx`` extra)."""
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise MissingDependencyError(what, "onnx") from err
