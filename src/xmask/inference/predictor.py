"""Inference on one image: count, head points and one instance mask per head.

:class:`Predictor` wraps a trained :class:`~xmask.models.XMaskModel` (eval mode, on its device)
and turns an image (``H×W×3 uint8`` RGB array, PIL image or file path) into a
:class:`Prediction`:

1. **Network** (``network_s``): the image as a ``1×3×H×W`` float tensor in ``[0, 1]`` →
   stride-4 logits (and, with a mask head, the stride-4 embedding), under
   ``torch.inference_mode``.
2. **Post-network** (``post_s``): the heads are the cells whose logit is above the count
   threshold (:func:`xmask.models.count_head.decode_points`; 0 is the paper's rule, a
   calibrated value comes from :mod:`xmask.inference.calibration`), each at its cell centre (a
   cell cut by the right or bottom image border puts its point at the centre of its part inside
   the image, so every point lies in the image); then the embedding is upsampled and smoothed
   (Eq. 2–5) and every head is segmented (Eq. 11–12, :data:`xmask.segment.instances.INFERENCE`:
   λ = 0.8, τ_g = 1.1, σ = 3). Every head gets a non-empty mask; overlaps go to the lowest
   energy. The label map is ``H×W int32``, 0 background, ``k`` = ``points[k − 1]``.

A model without a mask head (Stage 1) gives the count and the points; ``labels`` is None.

Two levels, as in segment-anything's predictor: ``predictor(image)`` does everything at once;
or :meth:`Predictor.set_image` runs the network once, then :meth:`Predictor.predict` gives the
predicted heads and :meth:`Predictor.segment` the masks of heads the caller gives (ground-truth
points, clicks), each without running the network again; the network's own count is always
reported. :meth:`Predictor.run_network` and :meth:`Predictor.predict_from` are the same two steps
with the network's outputs handed over instead of kept, so that one thread runs the network on
an image while another segments the one before (:mod:`xmask.apps.overlap`).

Large images
    An image with more than ``max_pixels`` pixels (default
    :data:`xmask.inference.tiling.MAX_PIXELS`, about 4.2 MP) runs the network in the overlapping
    tiles of :mod:`xmask.inference.tiling` (its tiling rule): logits *and* embedding are assembled
    from the same tiles, each cell decided by exactly one tile, so network memory is bounded by
    the tile size (the mask head's CoordConv channels span each tile, as they spanned each
    training crop). Heads are then segmented window by
    window (:mod:`xmask.segment.windows`, cores of ``core`` = 2048 px): the smoothed embedding
    ``Ẽ`` (``4·D`` = 64 bytes per pixel) exists for one window at a time, in a buffer the
    predictor reuses, and each pixel is labelled from exactly one window, with the same result
    as the whole image at once. What grows with the image is its ``H×W int32`` label map, the
    stride-4 outputs (``4·(D + 1)/16`` bytes per pixel) and the ``1×3×H×W`` input.

Backends
    ``backend="torch"`` (default) runs the network with PyTorch; ``backend="onnx"`` runs its
    ONNX graph with onnxruntime (:mod:`xmask.inference.onnx_backend`: a model folder's
    ``model.onnx``, else the network exported in memory); ``backend="onnx-int8"`` the folder's
    int8 copy of that graph (:mod:`xmask.inference.quantize`); :meth:`Predictor.load` also takes
    ``"auto"``, the command line's default (:func:`~xmask.inference.onnx_backend.auto_backend`).
    Tiling, the scale and count rules, decoding and segmentation are the same code for all.

Timing
    ``network_s`` and ``post_s``: wall-clock seconds of the two phases of each call (CUDA is
    synchronised between them); decoding an image file is in neither. A predictor with a mask
    head compiles the segmentation's loops in the background (:func:`~xmask.geometry.kernels.
    warm_up`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from xmask.data.image_io import ImageInput, as_rgb_array
from xmask.device import resolve_device
from xmask.errors import UsageError
from xmask.geometry import kernels
from xmask.geometry.circles import check_points
from xmask.geometry.labels import connected_masks
from xmask.inference.count_rule import CountRule, as_count_rule
from xmask.inference.decode import Heads
from xmask.inference.loading import InferenceModel, load_inference_model
from xmask.inference.onnx_backend import (
    AUTO,
    BACKENDS,
    OnnxNetwork,
    auto_backend,
    folder_onnx,
    onnx_bytes,
)
from xmask.inference.prediction import Prediction
from xmask.inference.quantize import folder_int8
from xmask.inference.scale import (
    ONE_PASS,
    ScaledOutputs,
    ScaleRule,
    adaptive_outputs,
    labels_to_size,
    resolve_scale,
)
from xmask.inference.tiling import MAX_PIXELS, OVERLAP, TILE, Network, check_tiling
from xmask.models.count_head import COUNT_STRIDE
from xmask.models.fusion import inference_copy
from xmask.segment.grid import GRIDS, segment_on_grid
from xmask.segment.instances import INFERENCE, SegmentConfig
from xmask.segment.windows import CORE, TableBuffer, segment_in_windows

log = logging.getLogger(__name__)


@dataclass
class ImageFeatures:
    """What :meth:`Predictor.set_image` keeps of one image.

    Attributes:
        image: the ``H×W×3 uint8`` RGB input.
        scaled: the network's stride-4 logits (``1×1×h×w``) and, with a mask head, its
            embedding (``1×D×h×w``), for the network input at the scale the predictor's
            :class:`~xmask.inference.scale.ScaleRule` chose.
        network_s: seconds in the network (every pass).
    """

    image: np.ndarray
    scaled: ScaledOutputs
    network_s: float

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` of the image."""
        height, width = self.image.shape[:2]
        return int(height), int(width)

    @property
    def tiles(self) -> int:
        """Network tiles of the final pass (1: the whole input at once)."""
        return self.scaled.tiles


class Predictor:
    """Count, head points and one instance mask per head for single images (module docstring).

    Args:
        model: a trained network (an :class:`~xmask.models.XMaskModel`). The predictor runs an
            :func:`~xmask.models.fusion.inference_copy` of it on ``device`` (BatchNorm folded,
            channels-last, eval mode); ``model`` itself is untouched.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda:1"``, or a device.
        count_threshold: logit above which a cell counts as a head (0: the paper's rule), or a
            two-regime :class:`~xmask.inference.count_rule.CountRule`.
        segment: constants of Eq. 11–12 and of the smoothing (default: evaluation's).
        max_pixels: images with more pixels run in tiles (None: never).
        tile: tile side in pixels (a multiple of 16).
        overlap: least overlap of neighbouring tiles (a multiple of 16).
        mask_grid: masks on blocks of this many pixels a side (1: every pixel; 2 or 4: about
            ``mask_grid²`` times less work after the network, coarser edges, always
            connected: :mod:`xmask.segment.grid`).
        core: side of the windows heads are segmented in (a multiple of 4;
            :mod:`xmask.segment.windows`).
        scale: how the network input is sized from the image
            (:class:`~xmask.inference.scale.ScaleRule`; default: the image as it is, one pass;
            :meth:`load` takes the model folder's rule).
        backend: ``"torch"``, ``"onnx"`` or ``"onnx-int8"`` (module docstring, Backends).
        onnx: the ONNX file of ``model`` for the onnx backends (None: ``model`` exported in
            memory, onnx only; :meth:`load` gives a model folder's checked ``model.onnx`` or
            ``model.int8.onnx``).

    Raises:
        ValueError: bad tiling arguments.
        UsageError: an unknown backend, or onnx-int8 without its file.
        MissingDependencyError: an onnx backend without onnxruntime (the ``onnx`` extra).
        XmaskError: an unavailable device.
    """

    def __init__(
        self,
        model: nn.Module,
        device: str | torch.device = "auto",
        count_threshold: float | CountRule = 0.0,
        segment: SegmentConfig = INFERENCE,
        *,
        max_pixels: int | None = MAX_PIXELS,
        tile: int = TILE,
        overlap: int = OVERLAP,
        core: int = CORE,
        mask_grid: int = 1,
        scale: ScaleRule = ONE_PASS,
        backend: str = "torch",
        onnx: str | Path | None = None,
    ) -> None:
        check_tiling(tile, overlap)
        if core <= 0 or core % COUNT_STRIDE:
            raise ValueError(f"core must be a positive multiple of {COUNT_STRIDE}, got {core}")
        if backend not in BACKENDS:
            raise UsageError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.model = inference_copy(model).to(self.device)
        if self.has_masks:
            kernels.warm_up()
        self.backend = backend
        self.onnx: OnnxNetwork | None = None
        """The onnx backend's network (None with the torch backend)."""
        self.network: Network = self.model
        if backend == "onnx-int8" and onnx is None:
            raise UsageError("the onnx-int8 backend needs the int8 graph of a model folder")
        if backend in ("onnx", "onnx-int8"):
            if onnx is None:
                log.info("no ONNX file given: exporting the network in memory")
            self.onnx = OnnxNetwork(onnx_bytes(model) if onnx is None else onnx, self.device)
            self.network = self.onnx
        self.count_rule = as_count_rule(count_threshold)
        self.segment_config = segment
        self.max_pixels, self.tile, self.overlap = max_pixels, tile, overlap
        self.core = core
        if mask_grid not in GRIDS:
            raise UsageError(f"mask grid must be one of {GRIDS}, got {mask_grid}")
        self.mask_grid = mask_grid
        self.scale = scale
        self._buffer = TableBuffer()
        self.source: Path | None = None
        """The model folder or run it was loaded from (:meth:`load`), else None."""
        self.features: ImageFeatures | None = None
        """The network's outputs for the last :meth:`set_image`."""

    @classmethod
    def load(
        cls,
        model: str | Path | InferenceModel | None = None,
        device: str | torch.device = "auto",
        which: str = "teacher",
        threshold: str | float = "auto",
        scale: str | ScaleRule = "auto",
        backend: str = "torch",
        locate: float | None = None,
        **kwargs: Any,
    ) -> Predictor:
        """A predictor for a model folder, a registered model name or a training run
        (:func:`xmask.inference.loading.load_inference_model`).

        Args:
            model: a model folder or name (None: the shipped default model), or a run folder,
                its ``checkpoints/`` or ``best/`` folder, or a ``.safetensors`` file in a run;
                or what :func:`load_inference_model` loaded (then on ``device`` already).
            device: where the network runs.
            which: ``"teacher"`` or ``"student"`` (runs only).
            threshold: a logit, or ``"auto"``: the model folder's threshold, or the
                calibration stored for a run's weights, else 0.
            scale: a :class:`~xmask.inference.scale.ScaleRule`, or ``"auto"`` (the model
                folder's rule; a run's: one pass), ``"off"``, ``"shrink"`` or ``"adaptive"``.
            locate: with a ``scale`` name, replaces the rule's ``locate_enlarge`` (0: no
                locating pass; None: the rule's own).
            backend: ``"torch"``, ``"onnx"`` (a model folder's checked ``model.onnx``, else
                exported in memory), ``"onnx-int8"`` (its checked ``model.int8.onnx``) or
                ``"auto"`` (:func:`auto_backend`; :attr:`backend` tells which ran).
            kwargs: the other arguments of :class:`Predictor` (``segment`` defaults to the
                model folder's).

        Raises:
            CheckpointError: missing, corrupt, tampered or foreign files.
            XmaskError: a bad threshold or device.
        """
        resolved = device if isinstance(device, torch.device) else resolve_device(device)
        loaded = model
        if not isinstance(model, InferenceModel):
            loaded = load_inference_model(model, resolved, which, threshold)
        if backend == AUTO:
            backend = auto_backend(resolved, None if loaded.card is None else loaded.card.int8)
        kwargs.setdefault("segment", loaded.segment)
        if backend == "onnx" and loaded.card is not None:
            kwargs.setdefault("onnx", folder_onnx(loaded.source, loaded.card.onnx))
        if backend == "onnx-int8":
            int8 = None if loaded.card is None else loaded.card.int8
            kwargs.setdefault("onnx", folder_int8(loaded.source, int8))
        rule = resolve_scale(scale, loaded.scale, locate) if isinstance(scale, str) else scale
        predictor = cls(
            loaded.model, resolved, loaded.count_rule, scale=rule, backend=backend, **kwargs
        )
        predictor.source = loaded.source
        return predictor

    @property
    def has_masks(self) -> bool:
        """The model has a mask head (predictions carry label maps)."""
        return getattr(self.model, "mask_head", None) is not None

    def set_image(self, image: ImageInput) -> ImageFeatures:
        """Run the network on ``image`` (``H×W×3 uint8`` RGB, a PIL image or an image file) and
        keep its outputs: :meth:`predict` and :meth:`segment` then work on them without running
        the network again.

        Returns:
            The kept :class:`ImageFeatures` (also :attr:`features`).
        """
        self.features = self.run_network(image)
        return self.features

    def run_network(self, image: ImageInput) -> ImageFeatures:
        """The network's outputs for one image, kept nowhere (:meth:`set_image` keeps them):
        with :meth:`predict_from`, a pipeline runs the network on one image while another
        thread post-processes the one before.

        Args:
            image: ``H×W×3 uint8`` RGB, a PIL image or an image file.
        """
        array = as_rgb_array(image)
        with torch.inference_mode():
            start = time.perf_counter()
            scaled = adaptive_outputs(
                self.network,
                array,
                self.device,
                self.scale,
                self.count_rule,
                max_pixels=self.max_pixels,
                tile=self.tile,
                overlap=self.overlap,
            )
            self._synchronize()
        return ImageFeatures(array, scaled, time.perf_counter() - start)

    def predict(self, masks: bool = True) -> Prediction:
        """Count, points and (with a mask head) masks of the heads the network finds in the
        image of the last :meth:`set_image`.

        Args:
            masks: segment the heads (False: count and points only, ``labels`` None).

        Raises:
            UsageError: no image set.
        """
        return self.predict_from(self._features(), masks)

    def predict_from(self, features: ImageFeatures, masks: bool = True) -> Prediction:
        """:meth:`predict` for the given outputs of :meth:`run_network`. Segmentation reuses
        one buffer of the predictor: one thread at a time may call this (or :meth:`predict`,
        :meth:`segment`), while another runs :meth:`run_network`."""
        heads = self._heads(features)
        points = features.scaled.head_points(heads.points)
        return self._segmented(features, points, heads.scores, len(heads), masks)

    def segment(self, points: np.ndarray, scores: np.ndarray | None = None) -> Prediction:
        """Masks of heads the caller gives (e.g. ground-truth points or a click) in the image
        of the last :meth:`set_image`, instead of the predicted ones; ``count`` is still the
        network's own count.

        Args:
            points: ``N×2`` ``(x, y)`` pixels inside ``[0, W] × [0, H]``.
            scores: ``N`` head probabilities kept in the result (default 1).

        Raises:
            UsageError: no image set, or the model has no mask head.
            ValueError: points not ``N×2``, not finite, or outside the image.
        """
        features = self._features()
        if not self.has_masks:
            raise UsageError("segmenting given points needs a model with a mask head")
        if np.ndim(points) != 2 or np.shape(points)[1] != 2:
            raise ValueError(f"points must be N×2 (x, y), got shape {np.shape(points)}")
        pts = check_points(points, features.size)
        given = np.ones(len(pts), np.float32) if scores is None else np.asarray(scores, np.float32)
        count = len(self._heads(features))
        return self._segmented(features, pts, given.reshape(len(pts)), count)

    def __call__(self, image: ImageInput) -> Prediction:
        """:meth:`set_image` then :meth:`predict`: one image's count, points and masks."""
        self.set_image(image)
        return self.predict()

    def segment_points(
        self, image: ImageInput, points: np.ndarray, scores: np.ndarray | None = None
    ) -> Prediction:
        """:meth:`set_image` then :meth:`segment`: masks of the given heads of one image."""
        self.set_image(image)
        return self.segment(points, scores)

    def predict_and_segment_points(
        self, image: ImageInput, points: np.ndarray
    ) -> tuple[Prediction, Prediction]:
        """``(predict(), segment(points))`` of one image, from one network pass."""
        self.set_image(image)
        return self.predict(), self.segment(points)

    def _features(self) -> ImageFeatures:
        if self.features is None:
            raise UsageError("no image set: call set_image(image) first")
        return self.features

    def _heads(self, features: ImageFeatures) -> Heads:
        """The heads the count rule selects, in pixels of the network input."""
        return features.scaled.heads(self.count_rule)

    def _segmented(
        self,
        features: ImageFeatures,
        points: np.ndarray,
        scores: np.ndarray,
        count: int,
        masks: bool = True,
    ) -> Prediction:
        """The :class:`Prediction` of one head set (``N×2`` ``(x, y)`` image pixels, ``N``
        scores), segmented on the network input and brought to the image's size."""
        start = time.perf_counter()
        labels = areas = None
        scaled = features.scaled
        embedding = scaled.outputs.embedding
        if embedding is not None and masks:
            on_input = points if scaled.size == features.size else scaled.to_input(points)
            on_input = np.minimum(on_input, np.array([scaled.size[1], scaled.size[0]], np.float32))
            config, grid = self.segment_config, self.mask_grid
            with torch.inference_mode():
                if grid == 1:
                    instances = segment_in_windows(
                        embedding[0], scaled.size, on_input, scores, config, self.core, self._buffer
                    )
                    labels, areas = instances.labels, instances.area
                else:
                    labels, areas = segment_on_grid(
                        embedding[0], scaled.size, on_input, config, grid, self.core, self._buffer
                    )
            if scaled.size != features.size:
                labels, areas = labels_to_size(labels, features.size, points)
                if self.segment_config.connected:
                    labels, areas = connected_masks(labels, points)
        return Prediction(
            count=count,
            points=points,
            scores=scores,
            labels=labels,
            size=features.size,
            network_s=features.network_s,
            post_s=time.perf_counter() - start,
            tiles=features.tiles,
            areas=areas,
            image=features.image,
        )

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
