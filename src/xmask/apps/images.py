"""Prediction over many image files into an output folder (files, re-runs and summary:
:mod:`xmask.apps.batch`), in throughput mode by default.

Each image goes through three stages (:func:`xmask.apps.overlap.run_stages`):

1. **read**: claim its output name, compare the fingerprint of an earlier result (an image
   already done stops here), decode the file;
2. **network**: :meth:`~xmask.inference.predictor.Predictor.run_network`;
3. **post**: :meth:`~xmask.inference.predictor.Predictor.predict_from` (heads and masks), the
   region, and every output file.

With ``pipeline=True`` each stage runs in its own thread, so that the next image is read and
the last one segmented and written while the network runs on this one; otherwise one image after
another. Both give the same files (the stages are the same code) and handle the images in the
same order: names are claimed, bad files reported and skipped, and finished images kept as the
sources come.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from xmask.apps.batch import (
    BatchSummary,
    ImageOutputs,
    OutputOptions,
    claim,
    prediction_record,
    read_record,
    settings_fingerprint,
    source_fingerprint,
    write_image_outputs,
)
from xmask.apps.overlap import Failed, Settled, run_stages
from xmask.apps.roi import restrict
from xmask.apps.sources import Source
from xmask.apps.zones import Zone
from xmask.data.files import remove_stale_temporaries
from xmask.data.image_io import load_image
from xmask.errors import DataError, UsageError
from xmask.inference.prediction import Prediction
from xmask.inference.predictor import ImageFeatures, Predictor

log = logging.getLogger(__name__)

SKIPPED_ERRORS = (DataError, UsageError, OSError)
"""What makes an image reported and skipped; any other error stops the call."""


@dataclass(frozen=True)
class _Read:
    """An image to predict: its name, files, fingerprint, whether an earlier result is redone,
    and its ``H×W×3 uint8`` RGB pixels."""

    name: str
    files: ImageOutputs
    fingerprint: dict[str, Any]
    redone: bool
    image: np.ndarray


@dataclass
class _ImageStages:
    """The three stages of :func:`predict_images` over one output folder (module docstring);
    ``owners`` (output name → first source of this call) is used by the read stage alone."""

    predictor: Predictor
    out: Path
    model: str
    roi: np.ndarray | None
    zones: Sequence[Zone]
    options: OutputOptions
    force: bool
    settings: str
    owners: dict[str, str] = field(default_factory=dict)

    def read(self, source: Source) -> _Read | Settled:
        """Claim, compare, decode (a :class:`Settled` for an image that stops here)."""
        files = ImageOutputs(self.out, source.stem, self.options)
        first = self.owners.setdefault(files.stem, str(source.path))
        holder = claim(files, source, self.force) if first == str(source.path) else first
        if holder is not None:
            return Failed(UsageError(f"output name {files.stem!r} belongs to {holder}"))
        fingerprint = {"source": source_fingerprint(source), "settings": self.settings}
        earlier = read_record(files.prediction)
        if not self.force and earlier is not None and earlier.get("fingerprint") == fingerprint:
            return Settled()  # kept: its earlier result is up to date
        image = load_image(source.path, apply_exif=source.apply_exif).array
        return _Read(source.name, files, fingerprint, earlier is not None, image)

    def network(self, read: _Read) -> tuple[_Read, ImageFeatures]:
        """The network's outputs for the image."""
        return read, self.predictor.run_network(read.image)

    def post(self, done: tuple[_Read, ImageFeatures]) -> tuple[_Read, Prediction]:
        """Heads, masks, region and every output file of the image."""
        read, features = done
        prediction = self.predictor.predict_from(features)
        if self.roi is not None:
            prediction = restrict(prediction, self.roi)
        record = prediction_record(prediction, read.name, self.model, self.zones)
        write_image_outputs(read.files, prediction, record | {"fingerprint": read.fingerprint})
        return read, prediction


def predict_images(
    predictor: Predictor,
    sources: Sequence[Source],
    out: str | Path,
    *,
    model: str = "",
    which: str = "teacher",
    roi: np.ndarray | None = None,
    zones: Sequence[Zone] = (),
    options: OutputOptions | None = None,
    force: bool = False,
    settings: str | None = None,
    summary: BatchSummary | None = None,
    progress: bool = True,
    pipeline: bool = True,
) -> BatchSummary:
    """Predict every image source into ``out`` (layout and re-runs: :mod:`xmask.apps.batch`).

    Args:
        predictor: the model.
        sources: images, in output order (videos are left to :mod:`xmask.apps.video`).
        out: the output folder.
        model: the model's name or path, recorded in the outputs.
        which: the network of a run (part of the settings).
        roi: ``K×2`` ``(x, y)`` polygon to count inside (:mod:`xmask.apps.roi`), or None.
        zones: named polygons to count heads in (:mod:`xmask.apps.zones`).
        options: which files to write (default: all but the preview).
        force: redo every image, even one whose outputs are up to date.
        settings: :func:`~xmask.apps.batch.settings_fingerprint` of ``predictor``, ``which``,
            ``roi``, ``options`` and ``zones`` (computed when None).
        summary: totals to add to (a new one when None).
        progress: show a tqdm bar on stderr.
        pipeline: read, network and post-processing in three threads (module docstring).

    Returns:
        The summary of this call (:func:`~xmask.apps.batch.finish` adds the folder's totals
        and writes it); its ``seconds`` is the wall time from the first image read to the last
        output, when any image was predicted.
    """
    out = Path(out)
    remove_stale_temporaries(out)
    summary = summary or BatchSummary(model, predictor.count_rule.describe(), predictor.backend)
    options = options or OutputOptions()
    settings = settings or settings_fingerprint(predictor, which, roi, options, zones)
    stages = _ImageStages(predictor, out, model, roi, zones, options, force, settings)
    bar = tqdm(total=len(sources), desc="predict", unit="img", disable=not progress)
    start, elapsed = time.perf_counter(), 0.0
    results = run_stages(sources, (stages.read, stages.network, stages.post), threads=pipeline)
    with closing(results):
        for source, result in results:
            bar.update()
            if isinstance(result, Failed):
                if not isinstance(result.value, SKIPPED_ERRORS):
                    raise result.value
                summary.skip(source.name, str(result.value))
            elif isinstance(result, Settled):
                summary.already_done += 1
            else:
                read, prediction = result
                summary.predicted += 1
                summary.redone += read.redone
                elapsed = time.perf_counter() - start
                summary.network_s += prediction.network_s
                summary.post_s += prediction.post_s
                bar.set_postfix(heads=len(prediction.points), refresh=False)
    bar.close()
    summary.seconds += elapsed
    return summary
