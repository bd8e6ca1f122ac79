"""Named zones: a count of heads per named polygon, per image or video frame; and named
counting lines for videos and streams (:mod:`xmask.apps.tracking`).

A zones file (JSON, or YAML when it ends in ``.yaml``/``.yml``, read with ``yaml.safe_load``)
holds a mapping with the key ``zones``: a list of ``{"name": NAME, "polygon": [[x, y], ...]}``,
vertices in image pixels, ``(x, y)`` order, and optionally (or only) the key ``lines``: a list
of ``{"name": NAME, "line": [[x1, y1], [x2, y2]]}``, counting lines from the first point to the
second::

    {"zones": [{"name": "gate", "polygon": [[0, 0], [200, 0], [200, 150], [0, 150]]},
               {"name": "stage", "polygon": [[150, 100], [400, 100], [300, 300]]}],
     "lines": [{"name": "door", "line": [[0, 120], [200, 120]]}]}

Names are unique, 1–:data:`MAX_NAME` characters without control characters; a polygon has
3–:data:`MAX_VERTICES` finite vertices; a file holds 1–:data:`MAX_ZONES` zones (when it has
the key) and 1–:data:`MAX_ZONES` lines (when it has that key), lines named as zones are, each
with two distinct finite ends. A head counts in
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
from xmask.apps.tracking import CountingLine
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


@dataclass(frozen=True)
class ZoneFile:
    """What a zones file holds: its zones and its counting lines (either may be empty)."""

    zones: tuple[Zone, ...] = ()
    lines: tuple[CountingLine, ...] = ()


def _name(item: Any, kind: str, index: int, taken: Sequence[str]) -> str:
    name = item["name"]
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME:
        raise UsageError(f"{kind} {index + 1}: the name must be 1 to {MAX_NAME} characters")
    if not name.isprintable():
        raise UsageError(f"{kind} {name!r}: the name holds control characters")
    if name in taken:
        raise UsageError(f"{kind} {name!r}: the name is used twice")
    return name


def _items(content: dict, key: str) -> list:
    items = content[key]
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_ZONES:
        raise UsageError(f'"{key}" must be a list of 1 to {MAX_ZONES} {key}')
    return items


def line_ends(content: Any, label: str) -> np.ndarray:
    """``2×2 float64`` ``(x, y)`` ends of a list of two ``[x, y]`` pairs.

    Raises:
        UsageError: (starting with ``label``) not two finite, distinct points.
    """
    try:
        ends = np.asarray(content, dtype=np.float64)
    except (ValueError, TypeError) as err:
        raise UsageError(f"{label}: expected two [x, y] points ({err})") from err
    if ends.shape != (2, 2) or not np.isfinite(ends).all() or (ends[0] == ends[1]).all():
        raise UsageError(f"{label}: expected two distinct finite (x, y) points")
    return ends


def parse_line(text: str, name: str) -> CountingLine:
    """The counting line of ``"x1,y1 x2,y2"`` (``--line``), from the first point to the second.

    Raises:
        UsageError: not two distinct points of two numbers each.
    """
    label = f"line {text[:60]!r}"
    pairs = [p.split(",") for p in text.strip().replace(";", " ").split()]
    return CountingLine(name, line_ends(pairs, label))


def parse_zone_file(content: Any) -> ZoneFile:
    """The zones and lines of a loaded zones file (schema in the module docstring).

    Raises:
        UsageError: the content does not follow the schema.
    """
    if not isinstance(content, dict) or not content or set(content) - {"zones", "lines"}:
        raise UsageError('expected a mapping with the key "zones", "lines" or both')
    zones: list[Zone] = []
    for index, item in enumerate(_items(content, "zones") if "zones" in content else []):
        if not isinstance(item, dict) or set(item) != {"name", "polygon"}:
            raise UsageError(f'zone {index + 1}: expected exactly the keys "name" and "polygon"')
        name = _name(item, "zone", index, [z.name for z in zones])
        polygon = polygon_vertices(item["polygon"], f"zone {name!r}")
        if len(polygon) > MAX_VERTICES:
            raise UsageError(f"zone {name!r}: more than {MAX_VERTICES} vertices")
        zones.append(Zone(name, polygon))
    lines: list[CountingLine] = []
    for index, item in enumerate(_items(content, "lines") if "lines" in content else []):
        if not isinstance(item, dict) or set(item) != {"name", "line"}:
            raise UsageError(f'line {index + 1}: expected exactly the keys "name" and "line"')
        name = _name(item, "line", index, [line.name for line in lines])
        lines.append(CountingLine(name, line_ends(item["line"], f"line {name!r}")))
    return ZoneFile(tuple(zones), tuple(lines))


def parse_zones(content: Any) -> tuple[Zone, ...]:
    """The zones of a loaded zones file (:func:`parse_zone_file`)."""
    return parse_zone_file(content).zones


def read_zone_file(path: str | Path) -> ZoneFile:
    """The zones and lines of a JSON or YAML zones file.

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
        return parse_zone_file(content)
    except UsageError as err:
        raise DataError(path, f"zones file: {err}") from err


def read_zones(path: str | Path) -> tuple[Zone, ...]:
    """The zones of a JSON or YAML zones file (:func:`read_zone_file`)."""
    return read_zone_file(path).zones


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
