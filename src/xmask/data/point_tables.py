"""The one file that holds the points of every image of a folder (folder format).

A folder may hold, instead of one point file per image, one of these (the first found is used,
in this order; the others are left out with a warning):

1. ``points.csv`` (``image,x,y``): an image it does not list has no heads (a CSV cannot list
   an image without rows).
2. ``annotations.xml``: CVAT for images 1.1.
3. ``annotations.json``, or ``annotations/person_keypoints_*.json`` (the layout of CVAT's
   "COCO Keypoints 1.0" export): COCO keypoints.

``points.csv`` covers the whole folder: per-image point files are not read. A CVAT or COCO
file gives the points of the images it lists that have no point file of their own (a point file
of the image wins: a folder written by ``xmask annotate`` keeps its ``points/NAME.txt`` beside
its COCO ``annotations.json``); an image with neither is unlabeled. These files list every image
of their task, those without heads included. Their images are matched by file name (the last
part of the recorded name: ``images/IMG_1.jpg`` is ``IMG_1.jpg``); two recorded names with one
file name are an error.
"""

from __future__ import annotations

import logging
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import numpy as np

from xmask.data.point_formats import read_point_file
from xmask.data.points_io import read_csv_points
from xmask.errors import DataError

log = logging.getLogger(__name__)

TABLE_NAMES = ("points.csv", "annotations.xml", "annotations.json")
"""The table files of a folder, in order of precedence (module docstring)."""

COCO_EXPORT = "annotations/person_keypoints_*.json"
"""Where CVAT's COCO Keypoints export puts its file (the last in precedence)."""


class PointTable(NamedTuple):
    """The points of many images from one file.

    Attributes:
        source: the file.
        points: image file name → raw ``N×2 float64`` ``(x, y)`` points.
        complete: the file covers the folder, and an image it does not list has no heads
            (``points.csv``); else it serves images without a point file of their own.
    """

    source: Path
    points: dict[str, np.ndarray]
    complete: bool


def table_files(base: Path) -> list[Path]:
    """The table files of folder ``base``, in order of precedence."""
    found = [base / name for name in TABLE_NAMES if (base / name).is_file()]
    return found + sorted(p for p in base.glob(COCO_EXPORT) if p.is_file())


def _by_file_name(source: Path) -> dict[str, np.ndarray]:
    table: dict[str, np.ndarray] = {}
    owner: dict[str, str] = {}
    for name, entry in read_point_file(source).items():
        file_name = PurePosixPath(name.replace("\\", "/")).name
        other = owner.setdefault(file_name, name)
        if other != name:
            raise DataError(source, f"images {other!r} and {name!r} share the file name")
        table[file_name] = entry.points
    return table


def read_table(base: Path) -> PointTable | None:
    """The table of folder ``base`` (module docstring), or None when it has none.

    Raises:
        DataError: a table file its reader refuses, or two images of one file name.
    """
    files = table_files(base)
    if not files:
        return None
    source, *ignored = files
    if ignored and source.parent != base:
        names = ", ".join(p.name for p in files)
        raise DataError(source.parent, f"several COCO keypoints files ({names}): keep one")
    if ignored:
        log.warning("%s: used for the points; left out: %s", source, ", ".join(map(str, ignored)))
    if source.suffix == ".csv":
        return PointTable(source, read_csv_points(source), complete=True)
    return PointTable(source, _by_file_name(source), complete=False)


def warn_unknown_names(table: PointTable, images: list[Path]) -> None:
    """Warn about table entries that name no image of the folder."""
    unknown = sorted(set(table.points) - {p.name for p in images})
    if unknown:
        log.warning(
            "%s: points of %d unknown image(s): %s", table.source, len(unknown), unknown[:5]
        )
