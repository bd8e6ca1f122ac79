"""One ``xmask predict`` request: what to read, with which model, where to write; images
through :mod:`xmask.apps.images` (their files: :mod:`xmask.apps.batch`), videos through
:mod:`xmask.apps.video`, live sources (webcams, stream URLs: :mod:`xmask.apps.live`) through
:mod:`xmask.apps.stream`, after the files and one after another. The CLI turns its options into
a :class:`PredictRequest` and prints the :class:`~xmask.apps.batch.BatchSummary`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from xmask.apps.batch import BatchSummary, OutputOptions, finish, settings_fingerprint
from xmask.apps.frames import FrameSettings
from xmask.apps.images import predict_images
from xmask.apps.live import LiveSource, live_source
from xmask.apps.roi import read_polygon
from xmask.apps.shard import gather_summaries, shard_sources
from xmask.apps.sources import dataset_sources, find_sources
from xmask.apps.stream import StreamOptions, predict_stream
from xmask.apps.tracking import CountingLine, TrackerConfig
from xmask.apps.video import predict_video
from xmask.apps.zones import ZoneFile, parse_line, read_zone_file
from xmask.data.files import check_out_folder
from xmask.device import DistInfo, resolve_device
from xmask.errors import DataError, UsageError
from xmask.inference.predictor import Predictor

log = logging.getLogger(__name__)


@dataclass
class PredictRequest:
    """The options of ``xmask predict``.

    Attributes:
        sources: files, folders, glob patterns or live sources (webcam indices, video
            devices, stream URLs) (or none, with ``dataset``).
        dataset: a dataset key instead of ``sources``, with ``root`` and ``split``.
        root: the dataset folder (None: the configured one).
        split: the dataset split.
        model: a model name or folder, or a training run (None: the shipped model).
        which: the network of a run.
        threshold: ``"auto"`` or a logit.
        scale: ``"auto"`` (the model's rule), ``"off"``, ``"shrink"`` or ``"adaptive"``
            (:func:`~xmask.inference.scale.resolve_scale`).
        locate: points from a locating pass this many times larger (0: none; None: the
            rule's own; :class:`~xmask.inference.scale.ScaleRule`).
        device: ``"auto"``, ``"cpu"``, ``"cuda:N"``.
        backend: what runs the network: ``"auto"``, ``"torch"``, ``"onnx"`` or
            ``"onnx-int8"`` (:meth:`~xmask.inference.predictor.Predictor.load`).
        mask_grid: masks on blocks of this many pixels a side (:mod:`xmask.segment.grid`).
        out: the output folder (None: ``predict-NAME``).
        roi: a region polygon or a file holding it, or None.
        zones: a zones file (:mod:`xmask.apps.zones`; its lines too), or None.
        lines: videos and streams: counting lines ``"x1,y1 x2,y2"``, named ``line1``, ...
        tracking: how head points are tracked for the lines.
        every: videos and streams: predict every N-th frame.
        stream: live sources: frame budget, bounds, annotated video, reconnection (its
            ``every`` is replaced by ``every``).
        recursive: folders: their sub-folders too.
        force: redo every item, even up-to-date ones.
        outputs: which files each image gets.
        progress: show progress bars.
        pipeline: images, videos and streams: reading, the network and post-processing in
            threads that overlap (:mod:`xmask.apps.overlap`; the same results as one after
            another; ``stream``'s ``pipeline`` is replaced by it).
    """

    sources: tuple[str, ...] = ()
    dataset: str | None = None
    root: str | None = None
    split: str = "test"
    model: str | None = None
    which: str = "teacher"
    threshold: str = "auto"
    scale: str = "auto"
    locate: float | None = None
    device: str = "auto"
    backend: str = "auto"
    mask_grid: int = 1
    out: str | None = None
    roi: str | None = None
    zones: str | None = None
    lines: tuple[str, ...] = ()
    tracking: TrackerConfig = field(default_factory=TrackerConfig)
    every: int = 1
    stream: StreamOptions = field(default_factory=StreamOptions)
    recursive: bool = False
    force: bool = False
    outputs: OutputOptions = field(default_factory=OutputOptions)
    progress: bool = True
    pipeline: bool = True

    @property
    def out_folder(self) -> Path:
        """``out``, or ``predict-NAME`` after the first source or the dataset split."""
        if self.out:
            return Path(self.out).expanduser()
        if self.dataset is not None:
            return Path(f"predict-{self.dataset}-{self.split}")
        live = live_source(self.sources[0])
        name = live.name if live else Path(self.sources[0]).stem.replace("*", "") or "images"
        return Path(f"predict-{name}")

    def check(self) -> None:
        """Raise :class:`~xmask.errors.UsageError` for contradictory or bad options, and
        :class:`~xmask.errors.DataError` for an output folder that is a file."""
        if bool(self.sources) == (self.dataset is not None):
            raise UsageError("xmask predict needs either SOURCE or --dataset")
        if self.every < 1:
            raise UsageError(f"--every must be at least 1, got {self.every}")
        check_out_folder(self.out_folder)


def _lines(zone_file: ZoneFile, texts: tuple[str, ...]) -> tuple[CountingLine, ...]:
    """The zones file's lines and those of ``--line`` (``line1``, ...).

    Raises:
        UsageError: a bad line, or two lines of one name.
    """
    lines = (*zone_file.lines, *(parse_line(t, f"line{i}") for i, t in enumerate(texts, 1)))
    names = [line.name for line in lines]
    if len(set(names)) < len(names):
        raise UsageError(f"two counting lines share a name: {names}")
    return lines


def run_predict(request: PredictRequest, info: DistInfo | None = None) -> BatchSummary | None:
    """Predict every image, video and live source of ``request`` into its output folder and
    write the folder's ``annotations.json`` and ``summary.json``.

    Under ``torchrun`` (``info`` of several ranks) this rank predicts its share of the image
    and video files (:mod:`xmask.apps.shard`; live sources: rank 0); rank 0 writes the summary
    and returns it, other ranks None.

    Raises:
        XmaskError: bad options, no sources, or no loadable model.
    """
    request.check()
    streams: list[LiveSource] = []
    if request.dataset is not None:
        sources = dataset_sources(request.dataset, request.root, request.split)
    else:
        live = {spec: live_source(spec) for spec in request.sources}
        streams = [s for s in live.values() if s is not None]
        files = [spec for spec, s in live.items() if s is None]
        sources = find_sources(files, recursive=request.recursive) if files else []
    if not sources and not streams:
        raise UsageError(f"{' '.join(request.sources) or request.root}: no images or videos")
    info = info or DistInfo()
    sources = shard_sources(sources, info)
    streams = streams if info.is_main else []  # a live source is not split: rank 0 reads it
    roi = None if request.roi is None else read_polygon(request.roi)
    zone_file = ZoneFile() if request.zones is None else read_zone_file(request.zones)
    zones = zone_file.zones
    frames = FrameSettings(
        roi, zones, _lines(zone_file, request.lines), request.tracking,
        request.outputs if request.outputs.heatmap else None,
    )  # fmt: skip
    predictor = Predictor.load(
        request.model,
        resolve_device(request.device, info.local_rank),
        request.which,
        request.threshold,
        request.scale,
        backend=request.backend,
        locate=request.locate,
        mask_grid=request.mask_grid,
    )
    model = str(predictor.source)
    out = request.out_folder
    summary = BatchSummary(model, predictor.count_rule.describe(), predictor.backend)
    settings = settings_fingerprint(predictor, request.which, roi, request.outputs, zones)
    images = [s for s in sources if not s.is_video]
    predict_images(
        predictor, images, out, model=model, which=request.which, roi=roi, zones=zones,
        options=request.outputs, force=request.force, settings=settings, summary=summary,
        progress=request.progress, pipeline=request.pipeline,
    )  # fmt: skip
    for video in (s for s in sources if s.is_video):
        try:
            result = predict_video(
                predictor, video, out, every=request.every, frames=frames, settings=settings,
                force=request.force, progress=request.progress, pipeline=request.pipeline,
            )  # fmt: skip
        except DataError as err:
            summary.skip(video.name, str(err))
            continue
        if result is None:
            summary.already_done += 1
            continue
        summary.videos_predicted += 1
        summary.network_s += result.network_s
        summary.post_s += result.post_s
    options = replace(request.stream, every=request.every, pipeline=request.pipeline)
    for stream in streams:
        try:
            done = predict_stream(
                predictor, stream, out, options=options, frames=frames, force=request.force,
                progress=request.progress,
            )  # fmt: skip
        except DataError as err:
            summary.skip(stream.label, str(err))
            continue
        summary.streams.append(asdict(done))
        summary.network_s += done.network_s
        summary.post_s += done.post_s
        if not done.frames_predicted and done.stopped != "interrupted":
            summary.skip(stream.label, done.problem or "no frame was predicted")
        if done.stopped == "interrupted":  # Ctrl-C ends the whole request
            break
    merged = gather_summaries(summary, info)
    return None if merged is None else finish(merged, out)
