"""Names and files of output folders: output names checked before they become paths.

An output name (``NAME`` in ``masks/NAME.png``) is a relative, ``/``-separated path without
suffix that keeps the sub-folders telling same-named files apart (``cam1/IMG_X``). Names that
come from data (a COCO ``file_name``, a folder listing) are checked by :func:`output_stem`, so
no name can leave its output folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import PurePosixPath

from xmask.errors import DataError


def output_stem(name: str) -> str:
    """The output name of a file name: its relative path without the suffix, ``/`` separated.

    Raises:
        DataError: an empty or absolute name, or one with a ``..`` or empty part.
    """
    path = PurePosixPath(name.replace("\\", "/"))
    parts = path.parts
    if not parts or path.is_absolute() or any(p in ("", ".", "..") for p in parts):
        raise DataError(name, "not a relative file name inside its folder")
    return path.with_suffix("").as_posix()


def distinct_stems(names: Sequence[str], source: object) -> dict[str, str]:
    """Output names of many file names: the folders all of them share are dropped, the ones that
    tell them apart kept (``cam1/IMG_X.jpg``, ``cam2/IMG_X.jpg`` → ``cam1/IMG_X``,
    ``cam2/IMG_X``; ``images/IMG_1.jpg``, ``images/IMG_2.jpg`` → ``IMG_1``, ``IMG_2``).

    Args:
        names: the file names.
        source: where they come from, named in errors.

    Raises:
        DataError: a name that would leave the output folder, or two names of one output name.
    """
    parts = [PurePosixPath(name.replace("\\", "/")).parts for name in names]
    common = 0
    while all(len(p) > common + 1 for p in parts) and len({p[common] for p in parts}) == 1:
        common += 1
    stems: dict[str, str] = {}
    owner: dict[str, str] = {}
    for name, split in zip(names, parts, strict=True):
        try:
            stem = output_stem("/".join(split[common:]))
        except DataError as err:
            raise DataError(source, f"image {name!r}: {err.problem}") from err
        other = owner.setdefault(stem, name)
        if other != name:
            raise DataError(source, f"images {other!r} and {name!r} would both be saved as {stem}")
        stems[name] = stem
    return stems
