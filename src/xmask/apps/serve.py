"""The model behind ``xmask serve``: an uploaded image in, a JSON-ready answer out, within limits.

:class:`PredictService` holds one :class:`~xmask.inference.predictor.Predictor`, loaded once,
and answers the requests of :mod:`xmask.apps.serve_http` without knowing HTTP: its methods take
bytes and parsed queries and return dicts, or raise :class:`RequestError` with the HTTP status
and a message.

One prediction (:meth:`PredictService.predict`)
    The network runs once (:meth:`Predictor.set_image`); the heads counted are those above the
    count threshold (the request's ``conf``, else the model's own rule); with a ``floor`` below
    it, every candidate head down to that probability comes back too. Heads are sorted by
    decreasing score (the first ``count`` are the counted ones) and segmented together
    (:meth:`Predictor.segment`); masks are COCO RLE (:meth:`Prediction.to_coco`).

Threshold slider
    The page asks once with a low floor and filters by score itself as its slider moves, with
    no new request: a head below the slider is hidden with its mask, and the pixels of that mask
    are not given to its neighbours (a new request with that ``conf`` would give them).

Limits (:class:`ServeLimits`)
    Bodies over ``max_upload_bytes`` are refused before they are read (413), images over
    ``max_image_pixels`` from their header before they are decoded (413), anything that is not
    an image with 400. Requests share the model one at a time (torch on one device): one that
    waits for it, or runs, longer than ``timeout_s`` is answered 503 (a network pass already
    running finishes in the background; segmentation is skipped after the deadline).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qs

import numpy as np

from xmask.apps.roi import parse_polygon
from xmask.apps.zones import Zone, parse_zones, zone_counts
from xmask.data.image_io import ImageTooLargeError, decode_image_bytes
from xmask.errors import DataError, UsageError
from xmask.inference.count_rule import CountRule
from xmask.inference.decode import Heads, decode_heads
from xmask.inference.predictor import Predictor

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_UPLOAD_BYTES = 20 * 2**20
"""Largest upload by default (20 MiB)."""

DEFAULT_IMAGE_PIXELS = 25_000_000
"""Largest image by default, in pixels (a 6000×4000 photo is 24 MP)."""

DEFAULT_TIMEOUT_S = 60.0
"""Longest a request may wait for the model and run, by default."""


class RequestError(Exception):
    """A request the service refuses.

    Attributes:
        status: the HTTP status (4xx: the request; 503: the model is busy or too slow).
        message: what is wrong, in words (the JSON ``error``).
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class ServeLimits:
    """What one request may ask of the server (module docstring, Limits).

    Raises:
        ValueError: a limit that is not positive.
    """

    max_upload_bytes: int = DEFAULT_UPLOAD_BYTES
    max_image_pixels: int = DEFAULT_IMAGE_PIXELS
    timeout_s: float = DEFAULT_TIMEOUT_S

    def __post_init__(self) -> None:
        values = (self.max_upload_bytes, self.max_image_pixels, self.timeout_s)
        if not all(v > 0 for v in values):
            raise ValueError(f"serve limits must be positive, got {self}")


def _probability(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 < value < 1.0:
        raise RequestError(400, f"{name} must be a probability strictly between 0 and 1")
    return value


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _sigmoid32(logit: float) -> float:
    """A logit as a probability rounded to float32, as the head scores are."""
    return float(np.float32(1.0 / (1.0 + math.exp(-logit))))


@dataclass(frozen=True)
class PredictQuery:
    """The query parameters of ``POST /predict``.

    Attributes:
        conf: count heads with probability above this (None: the model's own rule).
        floor: also return candidate heads down to this probability (None: only the counted).
        zone: ``K×2 float64`` ``(x, y)`` pixel vertices of a polygon to count the heads in.
        masks: segment the heads (False: points and scores only).
    """

    conf: float | None = None
    floor: float | None = None
    zone: np.ndarray | None = None
    masks: bool = True

    @classmethod
    def parse(cls, query: str) -> PredictQuery:
        """Parse ``conf=P&floor=P&zone=x1,y1 x2,y2 x3,y3&masks=0|1``.

        Raises:
            RequestError: (400) an unknown, repeated or bad parameter.
        """
        try:
            fields = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
        except ValueError as err:
            raise RequestError(400, f"bad query string ({err})") from err
        unknown = set(fields) - {"conf", "floor", "zone", "masks"}
        if unknown:
            raise RequestError(400, f"unknown parameter(s): {', '.join(sorted(unknown))}")
        if any(len(values) > 1 for values in fields.values()):
            raise RequestError(400, "each parameter may be given once")
        value = {key: values[0] for key, values in fields.items()}
        if value.get("masks", "1") not in ("0", "1"):
            raise RequestError(400, "masks must be 0 or 1")
        try:
            zone = parse_polygon(value["zone"]) if "zone" in value else None
        except UsageError as err:
            raise RequestError(400, str(err)) from err
        return cls(
            conf=_probability("conf", value["conf"]) if "conf" in value else None,
            floor=_probability("floor", value["floor"]) if "floor" in value else None,
            zone=zone,
            masks=value.get("masks", "1") == "1",
        )


def decode_upload(body: bytes, max_pixels: int) -> np.ndarray:
    """``H×W×3 uint8`` RGB of an uploaded image file (EXIF orientation applied).

    Raises:
        RequestError: 413 over ``max_pixels``; 400 not a (supported) image.
    """
    try:
        return decode_image_bytes(body, "upload", max_pixels=max_pixels).array
    except ImageTooLargeError as err:
        raise RequestError(413, str(err)) from err
    except DataError as err:
        raise RequestError(400, str(err)) from err


class PredictService:
    """One model answering uploads one at a time (module docstring).

    Args:
        predictor: the loaded model.
        limits: what a request may ask.
        model: the model's name in answers (default: the folder it was loaded from).
    """

    def __init__(
        self, predictor: Predictor, limits: ServeLimits | None = None, model: str | None = None
    ) -> None:
        self.predictor = predictor
        self.limits = limits or ServeLimits()
        self.model = model or str(predictor.source or "a model given in Python")
        self._lock = threading.Lock()
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="xmask-serve")

    def close(self) -> None:
        """Stop the worker thread (a prediction running finishes first)."""
        self._worker.shutdown(wait=False, cancel_futures=True)

    def health(self) -> dict[str, Any]:
        """``GET /health``: the model, its count rule, whether it segments, the limits."""
        return {
            "status": "ok",
            "model": self.model,
            "threshold": self.predictor.count_rule.describe(),
            "masks": self.predictor.has_masks,
            "max_upload_bytes": self.limits.max_upload_bytes,
            "max_image_pixels": self.limits.max_image_pixels,
            "timeout_s": self.limits.timeout_s,
        }

    def predict(self, body: bytes, query: PredictQuery) -> dict[str, Any]:
        """``POST /predict``: the count, heads and masks of one uploaded image.

        Returns:
            ``width``, ``height``; ``count`` (heads above the threshold); ``threshold`` (the
            logit applied) and ``conf`` (as a probability); ``floor`` (the lowest probability
            returned); ``points`` (``N×2`` ``(x, y)`` pixels, by decreasing score: the first
            ``count`` are counted), ``scores`` (``N``), ``masks`` (``N`` COCO RLE
            ``{"size": [H, W], "counts": str}``, or None without masks) and ``areas``;
            ``zone`` (``{"polygon", "count"}``, with a zone); ``model``, ``network_s``,
            ``post_s``.

        Raises:
            RequestError: a bad image (400, 413) or the time bound passed (503).
        """
        image = decode_upload(body, self.limits.max_image_pixels)
        return self._bounded(lambda deadline: self._answer(image, query, deadline))

    def count_zones(self, body: bytes) -> dict[str, Any]:
        """``POST /zones``: heads per zone of given points, without the model.

        Args:
            body: JSON ``{"points": [[x, y], ...], "zones": [{"name", "polygon"}, ...]}``
                (the zones of :mod:`xmask.apps.zones`).

        Returns:
            ``{"zones": {NAME: count, ...}}``.

        Raises:
            RequestError: (400) not that JSON.
        """
        try:
            content = json.loads(body)
        except (ValueError, RecursionError) as err:
            raise RequestError(400, f"not JSON ({err})") from err
        if not isinstance(content, dict) or set(content) != {"points", "zones"}:
            raise RequestError(400, 'expected {"points": [[x, y], ...], "zones": [...]}')
        try:
            points = np.asarray(content["points"], dtype=np.float64).reshape(-1, 2)
            zones = parse_zones({"zones": content["zones"]})
        except (ValueError, TypeError) as err:  # UsageError is a ValueError
            raise RequestError(400, str(err)) from err
        if not np.isfinite(points).all():
            raise RequestError(400, "points must be finite")
        return {"zones": zone_counts(points, zones)}

    def _bounded(self, job: Callable[[float], T]) -> T:
        """``job(deadline)`` on the worker thread, holding the model, within ``timeout_s``."""
        deadline = time.monotonic() + self.limits.timeout_s
        busy = f"the model is busy: no answer within {self.limits.timeout_s:g} s; try again"
        if not self._lock.acquire(timeout=self.limits.timeout_s):
            raise RequestError(503, busy)
        try:
            future = self._worker.submit(self._holding_lock, job, deadline)
        except BaseException:
            self._lock.release()
            raise
        try:
            return future.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout as err:
            raise RequestError(503, busy) from err

    def _holding_lock(self, job: Callable[[float], T], deadline: float) -> T:
        try:
            return job(deadline)
        finally:
            self._lock.release()

    def _answer(self, image: np.ndarray, query: PredictQuery, deadline: float) -> dict[str, Any]:
        predictor = self.predictor
        features = predictor.set_image(image)
        if time.monotonic() > deadline:
            raise RequestError(503, f"the network took over {self.limits.timeout_s:g} s")
        outputs, size = features.scaled.outputs, features.scaled.size
        own = features.scaled.rule or predictor.count_rule  # a locating pass sets its own
        rule = own if query.conf is None else CountRule(_logit(query.conf))
        threshold = rule.threshold_for(outputs.logits, size[0] * size[1])
        counted = decode_heads(outputs, size, CountRule(threshold))
        floor = threshold if query.floor is None else min(threshold, _logit(query.floor))
        heads = counted if floor == threshold else decode_heads(outputs, size, CountRule(floor))
        order = np.argsort(-heads.scores, kind="stable")
        points = features.scaled.head_points(heads.points[order])
        scores = heads.scores[order]
        answer: dict[str, Any] = {
            "model": self.model,
            "width": features.size[1],
            "height": features.size[0],
            "count": len(counted),
            "threshold": threshold,
            "conf": _sigmoid32(threshold),
            "floor": _sigmoid32(floor),
            "points": points.tolist(),
            "scores": scores.tolist(),
            "masks": None,
            "areas": None,
            "network_s": features.network_s,
            "post_s": 0.0,
        }
        if query.zone is not None:
            inside = zone_counts(points[: len(counted)], [Zone("zone", query.zone)])["zone"]
            answer["zone"] = {"polygon": query.zone.tolist(), "count": inside}
        if query.masks and predictor.has_masks:
            answer.update(self._masks(Heads(points, scores)))
        return answer

    def _masks(self, heads: Heads) -> dict[str, Any]:
        """``masks`` (COCO RLE), ``areas`` and ``post_s`` of heads in image pixels."""
        prediction = self.predictor.segment(heads.points, heads.scores)
        annotations = prediction.to_coco(file_name="upload")["annotations"]
        return {
            "masks": [annotation["segmentation"] for annotation in annotations],
            "areas": None if prediction.areas is None else prediction.areas.tolist(),
            "post_s": prediction.post_s,
        }
