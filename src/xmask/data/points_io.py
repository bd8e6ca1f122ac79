"""Point files in and out: MATLAB ``.mat``, plain text, JSON and CSV; validation of points.

Every reader returns the raw ``N×2 float64`` ``(x, y)`` array the file holds (NaN included);
:func:`clean_points` then drops NaN/infinite and out-of-image points with a warning naming the
file, so a sample's points are always finite and inside its image.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from scipy.io import loadmat

from xmask.data.files import atomic_write_bytes
from xmask.errors import DataError
from xmask.geometry.points import inside_image

log = logging.getLogger(__name__)

MAX_POINT_FILE_BYTES = 512 * 2**20
"""The largest point file read (a COCO file of a million heads takes about 150 MB); a larger
one is refused before it is parsed."""

MAT_KEYS = ("image_info", "annPoints")
"""The keys of the MATLAB point files xmask reads (ShanghaiTech, UCF-QNRF), in the order tried."""


def _as_points(values: object, path: Path) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError, OverflowError) as err:
        raise DataError(path, f"points are not numeric ({err})") from err
    if array.size == 0:
        return np.zeros((0, 2), dtype=np.float64)
    if array.ndim != 2 or array.shape[1] < 2:
        raise DataError(path, f"expected N×2 (x, y) points, got an array of shape {array.shape}")
    return array[:, :2].copy()


def _require(path: Path) -> None:
    if not path.is_file():
        raise DataError(path, "ground-truth file not found")
    size = path.stat().st_size
    if size > MAX_POINT_FILE_BYTES:
        raise DataError(
            path, f"{size:,} bytes, over the {MAX_POINT_FILE_BYTES:,} a point file may hold"
        )


def read_text(path: Path) -> str:
    """A point file's text: UTF-8, with or without a byte-order mark (Excel writes one).

    Raises:
        DataError: a missing file, or one that is not UTF-8 text (Latin-1, binary).
    """
    _require(path)
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(path, f"not UTF-8 text ({err}); save it as UTF-8") from err
    except OSError as err:
        raise DataError(path, f"unreadable ({err})") from err


def read_mat_points(path: str | Path, key: str | None = None) -> np.ndarray:
    """Points from a MATLAB file.

    Args:
        key: ``"image_info"`` (ShanghaiTech, nested struct ``[0,0][0,0][0]``) or any key that
            holds an ``N×2`` array directly (``"annPoints"`` for UCF-QNRF); None: the first of
            :data:`MAT_KEYS` the file holds.
    """

    path = Path(path)
    _require(path)
    try:
        content = loadmat(path)
    except Exception as err:  # a damaged file makes SciPy's parser raise almost anything
        # (zlib.error, struct.error, UnicodeDecodeError, MemoryError, ...): name the file
        problem = f"unreadable MATLAB file ({type(err).__name__}: {err})"
        raise DataError(path, problem) from err
    if key is None:
        key = next((k for k in MAT_KEYS if k in content), MAT_KEYS[0])
    if key not in content:
        found = sorted(k for k in content if not k.startswith("__"))
        raise DataError(path, f"no '{key}' entry (found: {', '.join(found) or 'none'})")
    value = content[key]
    if key == "image_info":
        try:
            value = value[0, 0][0, 0][0]
        except (IndexError, TypeError, ValueError, KeyError) as err:
            raise DataError(path, f"'image_info' is not the ShanghaiTech struct ({err})") from err
    return _as_points(value, path)


def read_txt_points(path: str | Path) -> np.ndarray:
    """Points from a text file: one point per line, ``x y`` first (space or comma separated).

    Extra columns (JHU-Crowd++'s ``w h o b``) are ignored; blank lines and ``#`` comments are
    skipped; an empty file means an image with no heads.
    """
    path = Path(path)
    rows: list[list[float]] = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        text = line.split("#", 1)[0].replace(",", " ").split()
        if not text:
            continue
        try:
            rows.append([float(text[0]), float(text[1])])
        except (ValueError, IndexError) as err:
            raise DataError(path, f"line {number}: expected 'x y', got {line.strip()!r}") from err
    return _as_points(rows, path)


def read_json(path: str | Path) -> object:
    """The content of a JSON file (UTF-8, see :func:`read_text`).

    Raises:
        DataError: a missing or unreadable file, or invalid JSON.
    """
    path = Path(path)
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise DataError(path, f"invalid JSON ({err})") from err
    except RecursionError as err:
        raise DataError(path, "invalid JSON (nested too deeply)") from err


def read_json_points(path: str | Path) -> np.ndarray:
    """Points from JSON: ``[[x, y], ...]``, ``[{"x": .., "y": ..}, ...]`` or ``{"points": ...}``."""
    return json_points(read_json(path), Path(path))


def json_points(content: object, path: Path) -> np.ndarray:
    """The points of the parsed content of a JSON point file (:func:`read_json_points`)."""
    if isinstance(content, dict):
        if "points" not in content:
            raise DataError(path, "JSON object has no 'points' key")
        content = content["points"]
    if not isinstance(content, list):
        raise DataError(path, "JSON points must be a list")
    if content and isinstance(content[0], dict):
        try:
            content = [[item["x"], item["y"]] for item in content]
        except (KeyError, TypeError) as err:
            raise DataError(path, f"every point object needs 'x' and 'y' ({err})") from err
    return _as_points(content, path)


def read_csv_points(path: str | Path) -> dict[str, np.ndarray]:
    """Points of many images from one CSV with a header naming columns ``image``, ``x``, ``y``.

    Returns:
        image file name → ``N×2`` points. Images absent from the file are not in the dict.
    """
    path = Path(path)
    points: dict[str, list[list[float]]] = defaultdict(list)
    try:
        reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
        missing = {"image", "x", "y"} - set(reader.fieldnames or [])
        if missing:
            raise DataError(path, f"CSV header lacks column(s) {', '.join(sorted(missing))}")
        for row in reader:
            try:
                points[row["image"]].append([float(row["x"]), float(row["y"])])
            except (TypeError, ValueError, OverflowError) as err:
                raise DataError(path, f"line {reader.line_num}: bad x/y ({err})") from err
    except csv.Error as err:
        raise DataError(path, f"malformed CSV ({err})") from err
    return {name: _as_points(rows, path) for name, rows in points.items()}


def write_points_txt(path: str | Path, points: np.ndarray) -> None:
    """Write ``N×2`` ``(x, y)`` points as ``x y`` lines with two decimals, atomically."""
    lines = "".join(f"{x:.2f} {y:.2f}\n" for x, y in np.asarray(points, dtype=np.float64))
    atomic_write_bytes(path, lines.encode("utf-8"))


def write_csv_points(path: str | Path, table: Mapping[str, np.ndarray]) -> None:
    """Write the points of many images as one CSV (``image,x,y``, three decimals), atomically;
    :func:`read_csv_points` reads it back."""
    text = io.StringIO(newline="")
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["image", "x", "y"])
    for name, points in table.items():
        for x, y in np.asarray(points, dtype=np.float64).reshape(-1, 2):
            writer.writerow([name, f"{x:.3f}", f"{y:.3f}"])
    atomic_write_bytes(path, text.getvalue().encode("utf-8"))


def clean_points(
    points: np.ndarray, size: tuple[int, int], source: str | Path
) -> tuple[np.ndarray, int]:
    """Drop NaN/infinite and out-of-image points, warning with the file name.

    Args:
        points: raw ``N×2`` ``(x, y)``.
        size: ``(H, W)`` of the image the points belong to.
        source: the point file, for the warning.

    Returns:
        ``(M×2 float32 points, number dropped)``.
    """
    finite = np.isfinite(points).all(axis=1)
    inside = finite & inside_image(points, size)
    dropped = int(len(points) - inside.sum())
    if dropped:
        log.warning(
            "%s: dropped %d of %d points (%d not finite, %d outside the %d×%d image)",
            source,
            dropped,
            len(points),
            int((~finite).sum()),
            int((finite & ~inside).sum()),
            size[1],
            size[0],
        )
    return points[inside].astype(np.float32), dropped
