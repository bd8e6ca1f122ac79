"""Head points from one format to another (``xmask data convert``).

Source (``src``)
    A folder is read as the folder format reads it (:class:`~xmask.data.readers.FolderDataset`:
    per-image files, ``points.csv``, ``annotations.xml`` or ``annotations.json``), each labeled
    image decoded for its size as a viewer shows it; unlabeled images are left out. A file is
    any point file (:func:`~xmask.data.point_formats.read_point_file`); where it records no
    image size (``.txt``, ``.mat``, xmask's JSON, ``points.csv``), the size is taken from the
    image of that name (or stem) in the file's folder or its ``images/``.
Target (``dest``, ``to``)
    ``labelme``, ``mat``, ``txt``: one file per image in the folder ``dest`` (``NAME.json``,
    ``NAME.mat``, ``NAME.txt``; names as :func:`~xmask.data.files.distinct_stems` keeps them
    apart). ``cvat``, ``coco``, ``csv``: one file, ``dest`` itself when it ends in ``.xml``,
    ``.json`` or ``.csv``, else ``dest/annotations.xml``, ``dest/annotations.json`` or
    ``dest/points.csv`` (the names the folder reader looks for).

Points that are NaN or outside their image are dropped with a warning
(:func:`~xmask.data.points_io.clean_points`; without a size, the non-finite ones). An item that
cannot be read, whose name would leave its folder, or that has no size for a format recording
one (LabelMe, CVAT, COCO) is reported and skipped. Every file is written atomically.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xmask.data.files import atomic_write_bytes, check_out_folder, distinct_stems, output_stem
from xmask.data.image_io import IMAGE_SUFFIXES, load_image
from xmask.data.point_formats import (
    ImagePoints,
    PointSet,
    coco_keypoints,
    cvat_xml,
    labelme_dict,
    read_point_file,
    write_mat,
)
from xmask.data.points_io import clean_points, write_csv_points, write_points_txt
from xmask.data.readers import FolderDataset
from xmask.errors import DataError

log = logging.getLogger(__name__)

PER_IMAGE = {"labelme": ".json", "mat": ".mat", "txt": ".txt"}
"""Targets of one file per image, and its suffix."""

ONE_FILE = {"cvat": "annotations.xml", "coco": "annotations.json", "csv": "points.csv"}
"""Targets of one file for all images, and its name in a folder."""

FORMATS = ("labelme", "cvat", "coco", "mat", "txt", "csv")
"""Every target format."""

SIZED = ("labelme", "cvat", "coco")
"""Targets that record each image's size."""


@dataclass
class ConvertSummary:
    """What a conversion did: images and points written, the files, the items skipped."""

    images: int = 0
    points: int = 0
    unlabeled: int = 0
    files: list[Path] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def skip(self, name: str, problem: object) -> None:
        log.warning("skipped %s: %s", name, problem)
        self.skipped.append({"name": name, "problem": str(problem)})


def _from_folder(src: Path, summary: ConvertSummary) -> PointSet:
    dataset = FolderDataset(src, "")
    images: PointSet = {}
    for item in dataset.items:
        if not item.annotated:
            summary.unlabeled += 1
            continue
        try:
            raw = dataset.read_raw(item)
        except DataError as err:
            summary.skip(item.name, err)
            continue
        images[item.name] = ImagePoints(raw.points, raw.image.size)
    return images


def _image_of(folder: Path, name: str) -> Path | None:
    """The image named ``name`` (a file name, or a stem) in ``folder`` or ``folder/images``."""
    for where in (folder, folder / "images"):
        options = [where / name] + [where / f"{name}{suffix}" for suffix in IMAGE_SUFFIXES]
        found = [p for p in options if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
        if found:
            return found[0]
    return None


def _from_file(src: Path, summary: ConvertSummary) -> PointSet:
    images: PointSet = {}
    for name, entry in read_point_file(src).items():
        try:
            output_stem(name)
        except DataError as err:  # a name of the data that would leave its folder
            summary.skip(name, err.problem)
            continue
        try:
            image = None if entry.size is not None else _image_of(src.parent, name)
            if image is not None:
                name, entry = (
                    image.name,
                    entry._replace(size=load_image(image, apply_exif=True).size),
                )
        except DataError as err:
            summary.skip(name, err)
            continue
        images[name] = entry
    return images


def _clean(name: str, entry: ImagePoints, src: Path) -> ImagePoints:
    points = np.asarray(entry.points, dtype=np.float64)
    if entry.size is None:
        return entry._replace(points=points[np.isfinite(points).all(axis=1)])
    return entry._replace(points=clean_points(points, entry.size, f"{src} ({name})")[0])


def _labelme(path: Path, name: str, entry: ImagePoints) -> None:
    assert entry.size is not None
    content = labelme_dict(name, entry.points, entry.size)
    atomic_write_bytes(path, (json.dumps(content, indent=2) + "\n").encode("utf-8"))


WRITERS: dict[str, Callable[[Path, str, ImagePoints], None]] = {
    "labelme": _labelme,
    "mat": lambda path, _, entry: write_mat(path, entry.points),
    "txt": lambda path, _, entry: write_points_txt(path, entry.points),
}
"""Writers of one image's file."""


def _write_one_file(images: PointSet, dest: Path, to: str) -> Path:
    default = ONE_FILE[to]
    path = dest if dest.suffix.lower() == Path(default).suffix else dest / default
    if to == "cvat":
        atomic_write_bytes(path, cvat_xml(images))
    elif to == "coco":
        atomic_write_bytes(path, json.dumps(coco_keypoints(images)).encode("utf-8"))
    else:
        write_csv_points(path, {name: entry.points for name, entry in images.items()})
    return path


def convert_points(src: str | Path, dest: str | Path, to: str) -> ConvertSummary:
    """Convert the points of ``src`` into format ``to`` at ``dest`` (module docstring).

    Raises:
        DataError: ``src`` missing or unreadable as a whole (a malformed file, a folder whose
            table file is refused), or two images that would be written to one file.
        ValueError: an unknown format ``to``.
    """
    if to not in FORMATS:
        raise ValueError(f"unknown point format {to!r}; choose from {', '.join(FORMATS)}")
    src, dest = Path(src).expanduser(), Path(dest).expanduser()
    summary = ConvertSummary()
    if not src.exists():
        raise DataError(src, "not found")
    read = _from_folder if src.is_dir() else _from_file  # names: files, or checked
    images: PointSet = {}
    for name, entry in read(src, summary).items():
        if entry.size is None and to in SIZED:
            summary.skip(name, "image size unknown: put the image beside the point file")
            continue
        images[name] = _clean(name, entry, src)
    if to in ONE_FILE:
        summary.files.append(_write_one_file(images, dest, to))
    else:
        check_out_folder(dest)
        stems = distinct_stems(list(images), src)
        for name, entry in images.items():
            path = dest / f"{stems[name]}{PER_IMAGE[to]}"
            WRITERS[to](path, name, entry)
            summary.files.append(path)
    summary.images = len(images)
    summary.points = sum(len(entry.points) for entry in images.values())
    return summary
