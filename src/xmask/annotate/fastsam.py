"""FastSAM baselines of the paper's Tab. 1: point prompts answered from FastSAM's candidate masks.

FastSAM (ultralytics ``FastSAM``: a YOLOv8-seg network, FastSAM-s = YOLOv8s-seg, FastSAM-x =
YOLOv8x-seg, one class) segments *everything*: ``K`` candidate masks per image (``K <= max_det``,
not the number of heads), at image resolution with ``retina_masks``. Each head point is then
answered from those candidates (paper Sec. 4.1):

``fastsam`` ("FastSAM", no NNEC)
    Each point takes the **smallest candidate mask covering its point pixel** (pixel of
    :func:`xmask.geometry.pixel_of`; ties of area go to the lower candidate index, i.e. the
    higher FastSAM confidence). Masks are *not* clipped to circles, so the chosen candidates
    overlap; the label map gives each pixel to one head by the rule **smallest area wins**:
    a pixel covered by several chosen candidates goes to the smallest of them, and a candidate
    chosen by several heads is split between those heads by the nearest point (Voronoi inside
    the candidate). The point pixel of every head that has a candidate is then given to it
    (lowest index first where two points share a pixel; flag ``forced`` where that changed
    the pixel's owner, which only equal areas or a nearer point of the same candidate can
    cause). Exact duplicate points: the lowest index takes the split, later copies end up
    empty (flag ``shared``; with no circle there is nothing to split between them, unlike
    :mod:`xmask.annotate.masks`). A point that no candidate
    covers gets **no mask** (FastSAM alone has no fallback).
``fastsam-nnec`` ("FastSAM + NNEC")
    The same choice, intersected with the head's NNEC circle ``C_i`` (Eq. 1); a point that no
    candidate covers gets "an NNEC-generated circular proxy" (paper): the disc of
    ``fallback_radius·r_i``, by default the full circle (flag ``fallback``). Circle, overlap,
    duplicate, co-located and point-pixel rules are those of :mod:`xmask.annotate.masks`; no
    pixel lies outside its circle.

The paper's FastSAM setting (App. A.2) reads "conf = 0.5 and iou = 0.01", but the sweep it
reports explores conf down to 0.01 and iou in {0.3, 0.5, 0.7, 0.95} and aims at high recall:
the two values look swapped (as λ and τ_g are in the same appendix). The defaults here are
conf 0.01, iou 0.5; FastSAM's own defaults are conf 0.4, iou 0.9.

Memory
    The ``K×H×W uint8`` candidate stack is what ultralytics returns; the matching never makes a
    heads × H × W array nor a copy of the stack (a ``uint8`` stack is read as ``bool`` in
    place): areas are summed over chunks of ``chunk`` candidates, and the owner map of the
    ``fastsam`` baseline is painted one chosen candidate at a time.

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
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import PIL.Image
import torch
from scipy.spatial import cKDTree

from xmask.annotate.masks import (
    R_MIN,
    MaskResult,
    check_points,
    disc_keep,
    head_circles,
    resolve_labels,
)
from xmask.device import resolve_device
from xmask.errors import DataError, UsageError
from xmask.geometry import DuplicatePolicy, nnec_radii, pixel_of

if TYPE_CHECKING:
    from ultralytics.models.fastsam import FastSAMPredictor

log = logging.getLogger(__name__)

os.environ.setdefault("YOLO_OFFLINE", "1")

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
        duplicates: policy for exact duplicate points (:mod:`xmask.annotate.masks`).
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
    fallback_radius: float = 1.0
    chunk: int = 16


# --------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------


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
        raise UsageError(
            "the FastSAM baselines need ultralytics: pip install 'xmask[fastsam]'"
        ) from err
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


def _check_image(image: np.ndarray) -> None:
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
    _check_image(image)
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


# --------------------------------------------------------------------------------------------
# Prompt matching (no network)
# --------------------------------------------------------------------------------------------


def _as_bool(masks: torch.Tensor) -> torch.Tensor:
    """``K×H×W bool`` masks; a ``uint8`` 0/1 stack (ultralytics') is reinterpreted, not copied."""
    if masks.ndim != 3:
        raise ValueError(f"candidate masks must be K×H×W, got shape {tuple(masks.shape)}")
    if masks.dtype == torch.bool:
        return masks
    if masks.dtype == torch.uint8:
        return masks.view(torch.bool)
    raise ValueError(f"candidate masks must be bool or 0/1 uint8, got {masks.dtype}")


def smallest_covering(
    masks: torch.Tensor, points: np.ndarray, chunk: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """For every point, the smallest candidate mask covering its point pixel.

    Args:
        masks: ``K×H×W`` bool or 0/1 uint8 candidate masks (any device).
        points: ``N×2`` ``(x, y)`` pixels inside ``[0, W] × [0, H]`` (a point on the right or
            bottom border lies in the last column or row).
        chunk: candidates whose area is summed at once.

    Returns:
        ``(choice, area)``: ``N int64`` candidate index per point, ``-1`` where no candidate
        covers the point (ties of area: the lower index); ``K int64`` candidate areas in pixels.
    """
    masks = _as_bool(masks)
    k, h, w = masks.shape
    n = len(points)
    area = np.zeros(k, dtype=np.int64)
    if k == 0 or n == 0:
        return np.full(n, -1, dtype=np.int64), area
    row_sum = torch.int16 if w < 2**15 else torch.int32  # row sums first: 4× faster than int32
    for start in range(0, k, chunk):
        rows = masks[start : start + chunk].sum(2, dtype=row_sum)
        area[start : start + chunk] = rows.sum(1, dtype=torch.int64).cpu().numpy()
    cell = torch.from_numpy(pixel_of(points, (h, w))).to(masks.device)
    covers = masks[:, cell[:, 1], cell[:, 0]].cpu().numpy()  # K×N
    cost = np.where(covers, area[:, None], np.iinfo(np.int64).max)
    choice = cost.argmin(axis=0)
    return np.where(covers.any(axis=0), choice, -1).astype(np.int64), area


def _smallest_owner(masks: torch.Tensor, order: np.ndarray) -> np.ndarray:
    """``H×W int64``: per pixel, the first position in ``order`` whose candidate covers it
    (``order`` by ascending area: the smallest), ``-1`` where none does."""
    owner = torch.full(masks.shape[1:], -1, dtype=torch.int64, device=masks.device)
    for rank in range(len(order) - 1, -1, -1):  # the largest first: smaller ones overwrite it
        owner.masked_fill_(masks[int(order[rank])], rank)
    return owner.cpu().numpy()


def _plain_labels(
    masks: torch.Tensor, pts: np.ndarray, choice: np.ndarray, area: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Label map of the ``fastsam`` baseline (smallest area wins; module docstring).

    Returns:
        ``(H×W int32 labels, N bool forced)``.
    """
    h, w = masks.shape[1:]
    n = len(pts)
    has = choice >= 0
    if not has.any():
        return np.zeros((h, w), dtype=np.int32), np.zeros(n, dtype=bool)
    chosen = np.unique(choice[has])
    order = chosen[np.lexsort((chosen, area[chosen]))]  # ascending area, ties: lower index
    rank_of = np.full(len(area), -1, dtype=np.int64)
    rank_of[order] = np.arange(len(order))
    head_rank = np.where(has, rank_of[np.maximum(choice, 0)], -1)
    owner = _smallest_owner(masks, order).ravel()
    sharers = np.bincount(head_rank[has], minlength=len(order))
    single = np.zeros(len(order), dtype=np.int64)
    single[head_rank[has]] = np.flatnonzero(has) + 1  # the head of a rank chosen once
    labels = np.where(owner >= 0, single[np.maximum(owner, 0)], 0)
    split = np.flatnonzero((owner >= 0) & (sharers[np.maximum(owner, 0)] > 1))
    if len(split):
        # nearest head among those sharing the candidate: the rank as a third coordinate,
        # spaced further apart than any two pixels of the image
        gap = 2.0 * (h + w)
        heads = np.flatnonzero(has & (sharers[np.maximum(head_rank, 0)] > 1))
        coords = np.column_stack([pts[heads].astype(np.float64), head_rank[heads] * gap])
        _, first = np.unique(coords, axis=0, return_index=True)  # copies: the lowest index
        heads, tree = heads[first], cKDTree(coords[first])
        query = np.column_stack(
            [split % w + 0.5, split // w + 0.5, owner[split].astype(np.float64) * gap]
        )
        labels[split] = heads[tree.query(query)[1]] + 1
    cell = pixel_of(pts, (h, w))
    point_pixel = cell[:, 1] * w + cell[:, 0]
    before = labels[point_pixel].copy()
    heads = np.flatnonzero(has)
    pixel, first = np.unique(point_pixel[heads], return_index=True)  # lowest index per pixel
    labels[pixel] = heads[first] + 1
    after = labels[point_pixel]
    forced = has & (before != np.arange(1, n + 1)) & (after == np.arange(1, n + 1))
    return labels.reshape(h, w).astype(np.int32), forced


def fastsam_labels(
    masks: torch.Tensor, points: np.ndarray, cfg: FastSamConfig, nnec: bool
) -> MaskResult:
    """One mask per head from FastSAM candidates (the two baselines; module docstring).

    Args:
        masks: ``K×H×W`` bool or 0/1 uint8 candidate masks at image resolution.
        points: ``N×2 float32`` ``(x, y)`` pixels inside ``[0, W] × [0, H]``.
        cfg: ``r_min``, ``duplicates``, ``fallback_radius``, ``chunk``.
        nnec: ``fastsam-nnec`` (clip to the NNEC circle, circle fallback) or ``fastsam``.

    Returns:
        :class:`~xmask.annotate.masks.MaskResult`, ``H×W int32`` labels (0 background, ``k`` =
        ``points[k − 1]``); ``fallback`` marks heads no candidate covers (``fastsam-nnec``:
        given the disc; ``fastsam``: left empty).

    Raises:
        ValueError: points not finite or outside the image.
    """
    masks = _as_bool(masks)
    size = tuple(masks.shape[1:])
    pts = check_points(points, size)
    choice, area = smallest_covering(masks, pts, cfg.chunk)
    missing = choice < 0
    if nnec:
        circles = head_circles(pts, size, cfg.r_min, cfg.duplicates)
        pixels = circles.pixels
        cand = torch.from_numpy(choice)[pixels.point]
        keep = torch.zeros(len(pixels), dtype=torch.bool)
        hit = cand >= 0
        if hit.any():
            device = masks.device
            sample = masks[cand[hit].to(device), pixels.y[hit].to(device), pixels.x[hit].to(device)]
            keep[hit] = sample.cpu()
        keep_np = keep.numpy()
        if missing.any():
            disc = disc_keep(circles, cfg.fallback_radius)
            keep_np = np.where(missing[pixels.point.numpy()], disc, keep_np)
        return resolve_labels(circles, keep_np, fallback=missing)
    labels, forced = _plain_labels(masks, pts, choice, area)
    cell = pixel_of(pts, size)
    _, inverse, counts = np.unique(
        cell[:, 1] * size[1] + cell[:, 0], return_inverse=True, return_counts=True
    )
    n = len(pts)
    return MaskResult(
        labels=labels,
        radii=nnec_radii(pts, size, r_min=cfg.r_min, duplicates=cfg.duplicates),
        area=np.bincount(labels.ravel(), minlength=n + 1)[1:].astype(np.int64),
        fallback=missing,
        forced=forced,
        shared=counts[inverse.ravel()] > 1,
    )


# --------------------------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------------------------


def annotate_fastsam(
    image: np.ndarray,
    points: np.ndarray,
    model: FastSAMPredictor,
    cfg: FastSamConfig,
    nnec: bool,
) -> MaskResult:
    """The ``fastsam`` (``nnec=False``) or ``fastsam-nnec`` baseline on one image.

    Args:
        image: ``H×W×3 uint8`` RGB.
        points: ``N×2 float32`` ``(x, y)`` pixels inside ``[0, W] × [0, H]``.
        model: from :func:`load_fastsam`.
        cfg: prediction and matching settings.
        nnec: clip to the NNEC circles with the circle fallback.

    Returns:
        :class:`~xmask.annotate.masks.MaskResult` (see :func:`fastsam_labels`).

    Raises:
        ValueError: a bad image, or points not finite or outside the image.
    """
    _check_image(image)
    check_points(points, image.shape[:2])
    start = time.perf_counter()
    masks = candidate_masks(model, image, cfg)
    middle = time.perf_counter()
    result = fastsam_labels(masks, points, cfg, nnec)
    log.debug(
        "FastSAM%s: %d candidates, %d heads, %d without a candidate; network %.3f s, "
        "matching %.3f s",
        " + NNEC" if nnec else "",
        len(masks),
        len(points),
        int(result.fallback.sum()),
        middle - start,
        time.perf_counter() - middle,
    )
    return result


def fastsam_backend(
    cfg: FastSamConfig | None = None, nnec: bool = True
) -> Callable[[np.ndarray, np.ndarray], MaskResult]:
    """An annotation backend ``(image H×W×3 uint8, points N×2 (x, y)) → MaskResult`` running
    the ``fastsam-nnec`` (``nnec``) or ``fastsam`` baseline; the network is loaded once, here."""
    cfg = cfg or FastSamConfig()
    model = load_fastsam(cfg)

    def run(image: np.ndarray, points: np.ndarray) -> MaskResult:
        return annotate_fastsam(image, points, model, cfg, nnec)

    return run
