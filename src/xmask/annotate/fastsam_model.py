"""FastSAM, the network: its configuration, loading a user-given checkpoint safely, and its
candidate masks for one image (the baselines that use them: :mod:`xmask.annotate.fastsam`).

The paper's FastSAM setting (App. A.2) reads "conf = 0.5 and iou = 0.01", but the sweep it
reports explores conf down to 0.01 and iou in {0.3, 0.5, 0.7, 0.95} and aims at high recall:
the two values look swapped (as λ and τ_g are in the same appendix). The defaults here are
conf 0.01, iou 0.5; FastSAM's own defaults are conf 0.4, iou 0.9.

Offline
    Importing this module sets ``YOLO_OFFLINE=1`` unless the variable is already set, so that
    ultralytics, imported lazily on first use, skips its connectivity probe (DNS look-ups at
    import) and with it usage analytics, update checks and auto-installs. Weights are only
    read from a local file that must exist: ultralytics would otherwise try to download a
    missing ``FastSAM-x.pt``. Predictions save nothing and plot nothing (no font download).
    ultralytics still writes its settings file (``~/.config/Ultralytics`` or
    ``$YOLO_CONFIG_DIR``) on first import. Its import sets ``OMP_NUM_THREADS=1`` where unset
    and its device set-up changes torch's thread count: :func:`load_fastsam` undoes both (the
    first when it is the first to import ultralytics).

Security
    ultralytics ``.pt`` checkpoints (the official ``FastSAM-s.pt`` / ``FastSAM-x.pt``) are
    pickles of the whole network. xmask only ever loads the file the user names, and loads it
    without executing code where it can: (1) ``torch.load(weights_only=True)``; a plain
    ``state_dict`` (or ``{"model": state_dict}``) is loaded into a freshly built FastSAM-s/x
    architecture (``arch``). (2) A pickled network goes through ultralytics' *restricted*
    loader (``torch_safe_load(safe_only=True)``: ``weights_only=True`` with an allow-list of
    ultralytics/torch layer classes; needs torch >= 2.6 and an ultralytics whose
    ``torch_safe_load`` takes ``safe_only``, e.g. 8.4.190; it registers those
    classes with torch for the rest of the process, so a later ``weights_only`` load of such a
    file succeeds at step 1). (3) Only with ``trust_pickle=True`` does a checkpoint that both
    refuse get fully unpickled by ultralytics, which **runs whatever code the file holds**:
    set it only for files from a source you trust.
"""

from __future__ import annotations

import inspect
import logging
import os
import pickle
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import PIL.Image
import torch

from xmask.device import resolve_device
from xmask.errors import DataError, MissingDependencyError, UsageError
from xmask.geometry.circles import (
    R_MIN,
    DuplicatePolicy,
)

os.environ.setdefault("YOLO_OFFLINE", "1")


if TYPE_CHECKING:
    from ultralytics.models.fastsam import FastSAMPredictor

log = logging.getLogger(__name__)


Arch = Literal["s", "x"]


@dataclass(frozen=True)
class FastSamConfig:
    """FastSAM network, prediction and matching settings (rules in the module docstring).

    Attributes:
        weights: local FastSAM checkpoint (``.pt``, ultralytics format or a state dict); None:
            a randomly initialised network of ``arch`` (speed tests only).
        arch: ``"s"`` (FastSAM-s, YOLOv8s-seg) or ``"x"`` (FastSAM-x, YOLOv8x-seg): the
            architecture built for random weights and for state-dict files.
        trust_pickle: allow a full (code-executing) unpickle of a checkpoint the safe loaders
            refuse.
        imgsz: longest input side of the network (FastSAM: 1024), a multiple of 32.
        conf: confidence threshold of the candidates.
        iou: NMS IoU threshold between candidates.
        max_det: most candidates kept per image.
        retina_masks: candidate masks computed at image resolution (FastSAM's setting); False:
            at network resolution, then resized.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``
            (:func:`xmask.device.resolve_device`).
        r_min: smallest NNEC radius in px (paper: 3).
        duplicates: policy for exact duplicate points (:mod:`xmask.geometry.labels`).
        size_prior: no circle wider than this many head sizes
            (:func:`xmask.geometry.circles.head_sizes`), or None: Eq. 1 alone.
        fallback_radius: ``fastsam-nnec``: radius of the fallback disc as a fraction of ``r_i``
            (1: the full NNEC circle).
        chunk: candidates processed at once by the matching (memory ``chunk·H·W``).
    """

    weights: str | Path | None = None
    arch: Arch = "x"
    trust_pickle: bool = False
    imgsz: int = 1024
    conf: float = 0.01
    iou: float = 0.5
    max_det: int = 300
    retina_masks: bool = True
    device: str = "auto"
    r_min: float = R_MIN
    duplicates: DuplicatePolicy = "distinct"
    size_prior: float | None = None
    fallback_radius: float = 1.0
    chunk: int = 16


def _import_ultralytics() -> None:
    """Import ultralytics once, with an install hint where it is missing, undoing its import-time
    side effects: ``OMP_NUM_THREADS=1`` (set where unset), so that the process keeps its torch
    threads, and its global replacement of ``PIL.Image.open`` (which turns an unreadable image
    into a ``ModuleNotFoundError`` for ``pi_heif``), so that xmask's readers keep their errors."""
    if sys.modules.get("ultralytics") is not None:
        return
    threads = torch.get_num_threads()
    omp = os.environ.get("OMP_NUM_THREADS")
    pil_open = PIL.Image.open
    try:
        import ultralytics
        import ultralytics.utils.patches  # noqa: F401
    except ImportError as err:
        raise MissingDependencyError("the FastSAM baselines need ultralytics", "fastsam") from err
    finally:
        PIL.Image.open = pil_open
    if omp is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    torch.set_num_threads(threads)


def _architecture(arch: Arch) -> torch.nn.Module:
    """A randomly initialised FastSAM-``arch`` network (ultralytics' packaged YOLOv8-seg yaml)."""
    from ultralytics.nn.tasks import SegmentationModel, yaml_model_load

    if arch not in ("s", "x"):
        raise UsageError(f"FastSAM arch must be 's' or 'x', got {arch!r}")
    spec = yaml_model_load(f"yolov8{arch}-seg.yaml")
    spec["nc"] = 1  # FastSAM segments one class-agnostic "object" class
    return SegmentationModel(spec, verbose=False)


def _state_dict(ckpt: object) -> Mapping[str, torch.Tensor] | None:
    """The state dict held by a ``weights_only`` checkpoint (itself or under ``model`` /
    ``state_dict``), or None."""
    if not isinstance(ckpt, Mapping):
        return None
    for candidate in (ckpt, ckpt.get("model"), ckpt.get("state_dict")):
        if (
            isinstance(candidate, Mapping)
            and candidate
            and all(isinstance(v, torch.Tensor) for v in candidate.values())
        ):
            return candidate
    return None


def _unpickle_network(path: Path, trust_pickle: bool) -> torch.nn.Module:
    """A pickled ultralytics network: restricted loader first, full unpickle only if trusted."""
    from ultralytics.nn.tasks import torch_safe_load

    if path.suffix.lower() != ".pt":
        raise DataError(path, "a pickled ultralytics checkpoint must be named *.pt")
    restricted = "safe_only" in inspect.signature(torch_safe_load).parameters and hasattr(
        torch.serialization, "get_unsafe_globals_in_checkpoint"
    )
    if restricted:
        try:
            return _network_of(torch_safe_load(str(path), safe_only=True)[0], path)
        except (TypeError, ModuleNotFoundError, pickle.UnpicklingError) as err:
            if not trust_pickle:
                raise DataError(
                    path,
                    f"not a state dict, and ultralytics' restricted loader refused it ({err}); "
                    "loading it needs a full unpickle, which runs code from the file: set "
                    "trust_pickle only if you trust its source",
                ) from err
    elif not trust_pickle:
        raise DataError(
            path,
            "a pickled checkpoint and this ultralytics/torch has no restricted loader "
            "(torch_safe_load(safe_only=...), torch >= 2.6); set trust_pickle only if you trust "
            "its source, "
            "or save the network's state_dict() and load that",
        )
    log.warning("FastSAM: fully unpickling %s (trust_pickle: it can run code)", path)
    return _network_of(torch_safe_load(str(path), safe_only=False)[0], path)


def _network_in(ckpt: object) -> torch.nn.Module | None:
    """The network of an ultralytics checkpoint dict (``ema`` preferred, as ultralytics does)."""
    if not isinstance(ckpt, Mapping):
        return None
    network = ckpt.get("ema")
    network = ckpt.get("model") if network is None else network
    return network.float() if isinstance(network, torch.nn.Module) else None


def _network_of(ckpt: object, path: Path) -> torch.nn.Module:
    """:func:`_network_in`, or a :class:`DataError` naming ``path``."""
    network = _network_in(ckpt)
    if network is None:
        raise DataError(path, "no FastSAM network in this checkpoint")
    return network


def _load_network(cfg: FastSamConfig) -> torch.nn.Module:
    """The FastSAM network of ``cfg.weights`` (loading rules: module docstring, *Security*)."""
    if cfg.weights is None:
        log.warning(
            "FastSAM-%s with RANDOM weights: masks are meaningless, use it for timing only",
            cfg.arch,
        )
        return _architecture(cfg.arch)
    path = Path(cfg.weights)
    if not path.is_file():
        raise DataError(path, "FastSAM checkpoint not found (weights are never downloaded)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        return _unpickle_network(path, cfg.trust_pickle)
    except (RuntimeError, EOFError) as err:
        raise DataError(path, f"not a readable torch checkpoint ({err})") from err
    network = _network_in(ckpt)  # a network whose classes torch's weights_only load allows
    if network is not None:
        return network
    state = _state_dict(ckpt)
    if state is None:
        raise DataError(path, "neither a state dict nor an ultralytics checkpoint")
    network = _architecture(cfg.arch)
    try:
        network.load_state_dict(state)
    except RuntimeError as err:
        raise DataError(path, f"state dict does not fit FastSAM-{cfg.arch}: {err}") from err
    return network


def load_fastsam(cfg: FastSamConfig) -> FastSAMPredictor:
    """FastSAM ready to predict: ultralytics' ``FastSAMPredictor`` set up with the network.

    The network comes from ``cfg.weights`` or is random (``cfg.weights = None``, logged as a
    warning); it is placed on ``cfg.device`` once. Prediction settings (``imgsz``, ``conf``,
    ``iou``, ``max_det``, ``retina_masks``) are applied per call by :func:`candidate_masks`.

    Raises:
        UsageError: ultralytics is not installed, or a bad ``arch``.
        DataError: the weights file is missing, unreadable, of another architecture, or a
            pickle that only a full (untrusted) unpickle could load.
        XmaskError: an unavailable device.
    """
    _import_ultralytics()
    from ultralytics.models.fastsam import FastSAMPredictor

    device = resolve_device(cfg.device)
    network = _load_network(cfg).eval()
    predictor = FastSAMPredictor(
        overrides={
            "task": "segment",
            "mode": "predict",
            "rect": True,
            "batch": 1,
            "save": False,
            "verbose": False,
            "device": str(device),
            **_predict_args(cfg),
        }
    )
    threads = torch.get_num_threads()
    predictor.setup_model(model=network, verbose=False)
    torch.set_num_threads(threads)  # ultralytics sets min(8, cores − 1) threads for the CPU
    return predictor


def _predict_args(cfg: FastSamConfig) -> dict[str, Any]:
    """The per-call prediction settings, as ultralytics names them."""
    return {
        "imgsz": cfg.imgsz,
        "conf": cfg.conf,
        "iou": cfg.iou,
        "max_det": cfg.max_det,
        "retina_masks": cfg.retina_masks,
    }


def check_image(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be H×W×3 uint8, got {image.shape} {image.dtype}")


def candidate_masks(model: FastSAMPredictor, image: np.ndarray, cfg: FastSamConfig) -> torch.Tensor:
    """FastSAM "everything" candidates of one image.

    Args:
        model: from :func:`load_fastsam`.
        image: ``H×W×3 uint8`` RGB.
        cfg: prediction settings (``imgsz``, ``conf``, ``iou``, ``max_det``, ``retina_masks``).

    Returns:
        ``K×H×W uint8`` (0/1) on the model's device, in FastSAM's order (confidence
        descending); ``K = 0`` when nothing passes ``conf``.
    """
    check_image(image)
    for key, value in _predict_args(cfg).items():
        setattr(model.args, key, value)
    (result,) = model(source=np.ascontiguousarray(image[..., ::-1]))  # ultralytics takes BGR
    h, w = image.shape[:2]
    if result.masks is None:
        return torch.zeros((0, h, w), dtype=torch.uint8, device=model.device)
    masks = result.masks.data
    if tuple(masks.shape[1:]) != (h, w):
        masks = _to_image_size(masks, (h, w), cfg.chunk)
    return masks


def _to_image_size(masks: torch.Tensor, size: tuple[int, int], chunk: int) -> torch.Tensor:
    """Network-resolution (letterboxed) masks → ``K×H×W uint8`` at image size, chunk by chunk."""
    from ultralytics.utils.ops import scale_masks

    out = torch.empty((len(masks), *size), dtype=torch.uint8, device=masks.device)
    for start in range(0, len(masks), chunk):
        part = masks[start : start + chunk][None].float()
        out[start : start + chunk] = scale_masks(part, size)[0] > 0.5
    return out
