"""Named zones: a count of heads per named polygon, per image or video frame.

A zones file (JSON, or YAML when it ends in ``.yaml``/``.yml``, read with ``yaml.safe_load``)
holds a mapping with one key, ``zones``: a list of ``{"name": NAME, "polygon": [[x, y], ...]}``,
vertices in image pixels, ``(x, y)`` order::

    {"zones": [{"name": "gate", "polygon": [[0, 0], [200, 0], [200, 150], [0, 150]]},
               {"name": "stage", "polygon": [[150, 100], [400, 100], [300, 300]]}]}

Names are unique, 1–:data:`MAX_NAME` characters without control characters; a polygon has
3–:data:`MAX_VERTICES` finite vertices; a file holds 1–:data:`MAX_ZONES` zones. A head counts in
a zone when the centre of the pixel holding its point is inside the polygon (even-odd rule, the
rule of ``--roi``: :func:`xmask.apps.roi.in_polygon`); zones may overlap, and a head may count
in several. Zones are counted after ``--roi`` restricts the heads.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from xmask.apps.roi import in_polygon, polygon_vertices
from xmask.errors import DataError, UsageError
from xmask.inference.prediction import Prediction

MAX_ZONES = 100
"""Most zones a file may hold."""

MAX_VERTICES = 1000
"""Most vertices a zone's polygon may have."""

MAX_NAME = 64
"""Longest zone name, in characters."""

MAX_FILE_BYTES = 1 << 20
"""Largest zones file read."""


@dataclass(frozen=True)
class Zone:
    """One named polygon.

    Attributes:
        name: unique within its file.
        polygon: ``K×2 float64`` ``(x, y)`` pixel vertices, ``K >= 3``.
    """

    name: str
    polygon: np.ndarray


def parse_zones(content: Any) -> tuple[Zone, ...]:
    """The zones of a loaded zones file (schema in the module docstring).

    Raises:
        UsageError: the content does not follow the schema.
    """
    if not isinstance(content, dict) or set(content) != {"zones"}:
        raise UsageError('expected a mapping with one key, "zones"')
    items = content["zones"]
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_ZONES:
        raise UsageError(f'"zones" must be a list of 1 to {MAX_ZONES} zones')
    zones: list[Zone] = []
    for index, item in enumerate(items):
        if not isinstance(item, dict) or set(item) != {"name", "polygon"}:
            raise UsageError(f'zone {index + 1}: expected exactly the keys "name" and "polygon"')
        name = item["name"]
        if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME:
            raise UsageError(f"zone {index + 1}: the name must be 1 to {MAX_NAME} characters")
        if not name.isprintable():
            raise UsageError(f"zone {name!r}: the name holds control characters")
        if any(z.name == name for z in zones):
            raise UsageError(f"zone {name!r}: the name is used twice")
        polygon = polygon_vertices(item["polygon"], f"zone {name!r}")
        if len(polygon) > MAX_VERTICES:
            raise UsageError(f"zone {name!r}: more than {MAX_VERTICES} vertices")
        zones.append(Zone(name, polygon))
    return tuple(zones)


def read_zones(path: str | Path) -> tuple[Zone, ...]:
    """The zones of a JSON or YAML zones file.

    Raises:
        DataError: (naming the file) unreadable, too large, not JSON/YAML, or not the schema.
    """
    path = Path(path).expanduser()
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise DataError(path, f"zones file over {MAX_FILE_BYTES} bytes")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(path, f"unreadable zones file ({err})") from err
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            content = yaml.safe_load(text)
        else:
            content = json.loads(text)
    except (ValueError, yaml.YAMLError, RecursionError) as err:
        raise DataError(path, f"not valid JSON/YAML ({err})") from err
    try:
        return parse_zones(content)
    except UsageError as err:
        raise DataError(path, f"zones file: {err}") from err


def zone_counts(points: np.ndarray | Prediction, zones: Iterable[Zone]) -> dict[str, int]:
    """Heads per zone, by name in the zones' order.

    Args:
        points: ``N×2`` ``(x, y)`` pixels (e.g. ``prediction.points``), or a
            :class:`~xmask.inference.prediction.Prediction` (its points).
        zones: from :func:`read_zones` or built as ``Zone(name, K×2 (x, y) array)``.
    """
    if isinstance(points, Prediction):
        points = points.points
    return {zone.name: int(in_polygon(points, zone.polygon).sum()) for zone in zones}


def zones_setting(zones: Sequence[Zone]) -> list[list[Any]]:
    """The zones as JSON for a settings fingerprint: ``[[name, [[x, y], ...]], ...]``."""
    return [[zone.name, zone.polygon.tolist()] for zone in zones]


def zone_column(name: str) -> str:
    """The CSV column of a zone's counts: ``zone:NAME``."""
    return f"zone:{name}"


def count_row(record: dict[str, Any]) -> tuple[str, int, dict[str, int]]:
    """What :func:`count_table` needs of a prediction record: image, count, heads per zone."""
    return str(record["image"]), int(record.get("count", 0)), dict(record.get("zones") or {})


def count_table(rows: Sequence[tuple[str, int, dict[str, int]]]) -> tuple[str, dict[str, int]]:
    """``counts.csv`` of an output folder's :func:`count_row` rows, and the heads per zone.

    The table has a row ``image,count,zone:NAME...`` per record; the zone columns are every
    zone of any record, in order of first appearance, empty for a record without that zone.
    """
    totals: dict[str, int] = {}
    for _, _, zones in rows:
        for name, count in zones.items():
            totals[name] = totals.get(name, 0) + int(count)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["image", "count", *map(zone_column, totals)])
    for image, count, zones in rows:
        writer.writerow([image, count, *(zones.get(name, "") for name in totals)])
    return text.getvalue(), totals
