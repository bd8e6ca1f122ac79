"""Model folders: a trained network that describes itself, and the names they are found by.

A model folder ``MODEL/`` holds two files:

- ``model.json``: ``format`` (:data:`FORMAT`), ``name``, ``description``, ``architecture``
  (:class:`~xmask.models.model.ModelConfig`), ``count_threshold`` (logit; with optional
  ``count_split`` and ``count_dense_threshold``, a two-regime rule), ``segment``
  (:class:`~xmask.segment.instances.SegmentConfig`, Eq. 11–12 at inference), ``scale``
  (optional, :class:`~xmask.inference.scale.ScaleRule`: how the network input is sized; a card
  without it runs the image as it is, in one pass), ``training``
  (dataset, labeled list, label fraction, images, recipe, run, step, seconds), ``metrics``
  (``"DATASET-SPLIT"`` → the figures of ``xmask evaluate --record``), ``weights`` (file name,
  SHA-256, dtype, tensor count), ``onnx`` (optional: file name, SHA-256, opset and outputs of
  the network as an ONNX graph, :mod:`xmask.inference.onnx_backend`), ``int8`` (optional: file
  name, SHA-256, method and calibration of the int8 graph, :mod:`xmask.inference.quantize`),
  ``xmask_version`` and ``created``;
- ``weights.safetensors``: the network's tensors (never a pickle);
- ``model.onnx`` (optional, ``xmask model export ... --format onnx``): the same network for
  onnxruntime;
- ``model.int8.onnx`` (optional, ``xmask model export ... --int8``): the network quantised to
  int8 for onnxruntime.

Loading checks the format, every required key, the weights' SHA-256 (a changed or truncated
file is refused as tampered) and that the tensors fit the architecture exactly; the ONNX files
are checked the same way when the onnx backends open them. A card's file entries must name plain
files inside the folder.

Names: ``xmask predict --model NAME`` looks for ``NAME/`` in the user's model folder
(``$XMASK_MODELS``, default ``~/.local/share/xmask/models``; ``xmask model export RUN NAME``
writes there) and then among the models shipped inside the package (``xmask/pretrained/``).
:data:`DEFAULT_MODEL` is the shipped model used when no model is named.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save
from torch import nn

from xmask import __version__
from xmask.data.files import atomic_write_bytes
from xmask.errors import XmaskError
from xmask.inference.checkpoint import CheckpointError, load_tensors, write_json
from xmask.inference.count_rule import CountRule
from xmask.inference.scale import ScaleRule
from xmask.models.model import ModelConfig, build_model
from xmask.segment.instances import SegmentConfig

log = logging.getLogger(__name__)


FORMAT = "xmask-model-1"


CARD_FILE = "model.json"


WEIGHTS_FILE = "weights.safetensors"


ONNX_FILE = "model.onnx"


INT8_FILE = "model.int8.onnx"


DEFAULT_MODEL = "shanghaitech-lite0"
"""The shipped model used when none is named."""


MODELS_ENV = "XMASK_MODELS"


WEIGHT_DTYPES = {"float32": torch.float32, "float16": torch.float16}


REQUIRED_KEYS = ("format", "name", "architecture", "count_threshold", "segment", "weights")


@dataclass
class ModelCard:
    """What ``model.json`` says about a model (module docstring).

    Attributes:
        name: the model's name (its folder name when registered).
        architecture: the network, built without backbone weights (they are in the file).
        count_threshold: cells whose logit is above it are heads (of sparse images when
            ``count_split`` is set).
        count_split: heads per 10,000 px above which an image is dense, or None.
        count_dense_threshold: the threshold of dense images, or None.
        segment: constants of Eq. 11–12 and of the smoothing at inference.
        scale: how the network input is sized from the image (None: as it is, one pass).
        description: one line for people.
        training: how it was trained (dataset, labeled list, label fraction, ...).
        metrics: ``"DATASET-SPLIT"`` → figures measured on the shipped weights.
        weights: ``file``, ``sha256``, ``dtype``, ``tensors``.
        onnx: ``file``, ``sha256``, ``opset``, ``outputs`` of the ONNX graph, or None.
        int8: ``file``, ``sha256``, ``opset``, ``method``, ``calibration_images``,
            ``calibration`` (and optionally ``metrics``) of the int8 graph, or None.
        xmask_version: the xmask that wrote the folder.
        created: UTC time of writing, ISO 8601.
    """

    name: str
    architecture: ModelConfig
    count_threshold: float
    count_split: float | None = None
    count_dense_threshold: float | None = None
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    scale: ScaleRule | None = None
    description: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, Any] = field(default_factory=dict)
    onnx: dict[str, Any] | None = None
    int8: dict[str, Any] | None = None
    xmask_version: str = ""
    created: str = ""

    def __post_init__(self) -> None:
        """Refuses a malformed count rule (ValueError)."""
        _ = self.count_rule

    @property
    def count_rule(self) -> CountRule:
        """The card's count rule."""
        return CountRule(self.count_threshold, self.count_split, self.count_dense_threshold)

    @staticmethod
    def rule_fields(rule: CountRule) -> dict[str, float | None]:
        """The card's fields for ``rule``."""
        return {
            "count_threshold": rule.threshold,
            "count_split": rule.split,
            "count_dense_threshold": rule.dense_threshold,
        }

    def to_dict(self) -> dict[str, Any]:
        """The JSON content of ``model.json``."""
        content = dataclasses.asdict(self)
        for optional in ("onnx", "int8"):
            if content[optional] is None:
                del content[optional]
        return {"format": FORMAT, **content}


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_model_folder(
    folder: str | Path, model: nn.Module, card: ModelCard, dtype: str = "float32"
) -> Path:
    """Write ``model``'s weights and ``card`` as a model folder (both files atomically; the
    card, which names the weights' checksum, last).

    Args:
        folder: created if needed; an existing model there is replaced.
        model: the network (its ``state_dict`` is saved).
        card: the description; ``weights``, ``xmask_version`` and ``created`` are filled in.
        dtype: ``"float32"`` or ``"float16"`` (half the size; loaded back as float32).

    Returns:
        The folder.
    """

    if dtype not in WEIGHT_DTYPES:
        raise XmaskError(f"weights dtype must be one of {sorted(WEIGHT_DTYPES)}, got {dtype!r}")
    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {
        k: v.detach().to("cpu", WEIGHT_DTYPES[dtype] if v.is_floating_point() else v.dtype)
        for k, v in model.state_dict().items()
    }
    weights = folder / WEIGHTS_FILE
    contiguous = {k: v.contiguous() for k, v in tensors.items()}
    atomic_write_bytes(weights, save(contiguous, metadata={"format": FORMAT}), durable=True)
    card.weights = {
        "file": WEIGHTS_FILE,
        "sha256": sha256_of(weights),
        "dtype": dtype,
        "tensors": len(tensors),
    }
    card.xmask_version = __version__
    card.created = card.created or datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_json(folder / CARD_FILE, card.to_dict())
    log.info("wrote model %s to %s", card.name, folder)
    return folder


def is_model_folder(path: str | Path) -> bool:
    """``path`` is a folder with a ``model.json``."""
    return (Path(path) / CARD_FILE).is_file()


def read_model_card(folder: str | Path) -> ModelCard:
    """The card of a model folder, checked.

    Raises:
        CheckpointError: no ``model.json``, unreadable JSON, another format (an older or
            newer xmask, or not xmask's), a missing key or a bad value.
    """
    path = Path(folder).expanduser() / CARD_FILE
    if not path.is_file():
        raise CheckpointError(path.parent, f"not an xmask model folder (no {CARD_FILE})")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(path, f"corrupt JSON ({err})") from err
    if not isinstance(content, dict):
        raise CheckpointError(path, "not a JSON object")
    found = content.get("format")
    if found != FORMAT:
        raise CheckpointError(
            path, f"model format {found!r} is not {FORMAT!r} (written by another xmask or tool)"
        )
    missing = [key for key in REQUIRED_KEYS if key not in content]
    if missing:
        raise CheckpointError(path, f"incomplete: missing {', '.join(missing)}")
    try:
        card = ModelCard(
            name=str(content["name"]),
            architecture=ModelConfig(**{**content["architecture"], "weights": None}),
            count_threshold=float(content["count_threshold"]),
            count_split=_optional_float(content.get("count_split")),
            count_dense_threshold=_optional_float(content.get("count_dense_threshold")),
            segment=SegmentConfig(**content["segment"]),
            scale=None if content.get("scale") is None else ScaleRule(**content["scale"]),
            description=str(content.get("description", "")),
            training=dict(content.get("training", {})),
            metrics=dict(content.get("metrics", {})),
            weights=dict(content["weights"]),
            onnx=None if content.get("onnx") is None else dict(content["onnx"]),
            int8=None if content.get("int8") is None else dict(content["int8"]),
            xmask_version=str(content.get("xmask_version", "")),
            created=str(content.get("created", "")),
        )
    except (TypeError, ValueError) as err:
        raise CheckpointError(path, f"bad value ({err})") from err
    if card.weights.get("dtype") not in WEIGHT_DTYPES or "sha256" not in card.weights:
        raise CheckpointError(path, "bad 'weights' entry (needs sha256 and dtype)")
    _check_file_entry(path, "weights", card.weights, WEIGHTS_FILE)
    for what, entry, default in (("onnx", card.onnx, ONNX_FILE), ("int8", card.int8, INT8_FILE)):
        if entry is not None:
            if "sha256" not in entry:
                raise CheckpointError(path, f"bad {what!r} entry (needs sha256)")
            _check_file_entry(path, what, entry, default)
    return card


def _check_file_entry(card: Path, what: str, entry: dict[str, Any], default: str) -> None:
    """Refuse an entry whose ``file`` is not a plain file name inside the model folder."""
    file = entry.get("file", default)
    if not isinstance(file, str) or file in ("", ".", "..") or "\\" in file or "/" in file:
        raise CheckpointError(
            card, f"{what} file {file!r} is not a plain file name inside the model folder"
        )


def checked_file(folder: Path, entry: dict[str, Any], default: str, what: str) -> Path:
    """The file a card entry (``weights``, ``onnx``, ``int8``) names in ``folder``, checked
    against the entry's SHA-256.

    Raises:
        CheckpointError: the file is missing, or changed or truncated since the card was written.
    """
    path = folder / str(entry.get("file", default))
    if not path.is_file():
        raise CheckpointError(path, f"{what} file not found (incomplete model folder)")
    if sha256_of(path) != entry["sha256"]:
        raise CheckpointError(
            path, f"checksum differs from {CARD_FILE}: the file was changed or truncated"
        )
    return path


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def load_model_folder(
    folder: str | Path, device: torch.device | str = "cpu"
) -> tuple[nn.Module, ModelCard]:
    """The network of a model folder (float32, eval mode, on ``device``) and its card.

    Raises:
        CheckpointError: a bad card (:func:`read_model_card`), missing weights, weights whose
            checksum differs from the card's (changed or truncated), a file that is not
            safetensors, or tensors that do not fit the architecture.
    """

    folder = Path(folder).expanduser()
    card = read_model_card(folder)
    weights = checked_file(folder, card.weights, WEIGHTS_FILE, "weights")
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_tensors(weights).items()}
    model = build_model(dataclasses.replace(card.architecture, weights=None))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(weights, f"weights do not fit the architecture ({err})") from err
    return model.to(device).eval(), card


def is_installed(folder: str | Path) -> bool:
    """The folder is one of the models installed with xmask (inside the package) or is not
    writable: it is never changed."""
    folder = Path(folder).expanduser().resolve()
    return folder.is_relative_to(shipped_models_dir().resolve()) or not os.access(folder, os.W_OK)


def output_folder(folder: str | Path) -> Path:
    """Where files about a model go (records, evaluation tables): the folder itself when it is
    the user's, else ``$XMASK_MODELS/NAME`` (the user's copy of an installed model)."""
    folder = Path(folder).expanduser()
    return user_models_dir() / folder.name if is_installed(folder) else folder


def record_metrics(folder: str | Path, key: str, metrics: dict[str, Any]) -> Path:
    """Add (or replace) ``metrics[key]`` in a model folder's card (atomically). An installed
    model (:func:`is_installed`) is first copied to ``$XMASK_MODELS/NAME``, which then hides it
    by name; the record goes to the copy.

    Returns:
        The model folder written.
    """
    folder = Path(folder).expanduser()
    read_model_card(folder)
    target = output_folder(folder)
    if not is_model_folder(target):
        copy_model_folder(folder, target)
        log.info("copied the installed model %s to %s for its records", folder, target)
    update_card(target, metrics={**read_model_card(target).metrics, key: metrics})
    return target


def copy_model_folder(folder: str | Path, target: str | Path) -> Path:
    """Copy a model folder's files (weights, the ONNX files if any, then the card) to ``target``
    (created if needed), each atomically.

    Raises:
        CheckpointError: a bad card.
    """
    folder, target = Path(folder).expanduser(), Path(target).expanduser()
    card = read_model_card(folder)
    files = [str(card.weights.get("file", WEIGHTS_FILE))]
    files += [] if card.onnx is None else [str(card.onnx.get("file", ONNX_FILE))]
    files += [] if card.int8 is None else [str(card.int8.get("file", INT8_FILE))]
    for name in [*files, CARD_FILE]:
        atomic_write_bytes(target / name, (folder / name).read_bytes(), durable=True)
    return target


def update_card(folder: str | Path, **entries: Any) -> None:
    """Set top-level entries of a model folder's ``model.json`` (atomically), keeping the rest
    as written."""
    path = Path(folder).expanduser() / CARD_FILE
    content = json.loads(path.read_text(encoding="utf-8"))
    write_json(path, content | entries)


def user_models_dir() -> Path:
    """Where ``xmask model export`` registers models: ``$XMASK_MODELS`` or
    ``~/.local/share/xmask/models``."""
    configured = os.environ.get(MODELS_ENV)
    return (
        Path(configured).expanduser() if configured else Path.home() / ".local/share/xmask/models"
    )


def shipped_models_dir() -> Path:
    """The models inside the package (``xmask/pretrained/``)."""
    return Path(str(resources.files("xmask") / "pretrained"))


def registered_models() -> dict[str, Path]:
    """Every model found by name: the user's, then the shipped ones (a user model hides a
    shipped one of the same name)."""
    found: dict[str, Path] = {}
    for base in (shipped_models_dir(), user_models_dir()):
        if base.is_dir():
            found.update({p.name: p for p in sorted(base.iterdir()) if is_model_folder(p)})
    return found


def resolve_model(spec: str | Path | None) -> Path:
    """The folder a model argument names: an existing path as it is, else a registered name;
    None is :data:`DEFAULT_MODEL`.

    Raises:
        CheckpointError: neither an existing path nor a registered name.
    """
    spec = DEFAULT_MODEL if spec is None else spec
    path = Path(spec).expanduser()
    if path.exists():
        return path
    models = registered_models()
    if str(spec) in models:
        return models[str(spec)]
    names = "registered: " + (", ".join(models) or "none")
    raise CheckpointError(path, f"not found: no such file, folder or registered model ({names})")
