"""Names and files of output folders: output names checked before they become paths, atomic
writes, appends of JSON lines, and the removal of what a killed process left behind.

Atomic writes (:func:`atomic_write_bytes`) go through a hidden temporary file
``.NAME.PID.HEX.tmp`` beside the target and a rename, so a reader never sees half a file; with
``durable`` the data and the rename are on disk (fsync) before the call returns. A process killed
between the two leaves its temporary file: :func:`remove_stale_temporaries`, run by every long
job on its folder, deletes those whose process (``PID``) is gone (and those of the older
``.NAME.HEX.tmp`` form, after a minute); a temporary of a live process is left alone, so two
jobs may share a folder.

An output name (``NAME`` in ``masks/NAME.png``) is a relative, ``/``-separated path without
suffix that keeps the sub-folders telling same-named files apart (``cam1/IMG_X``). Names that
come from data (a COCO ``file_name``, a folder listing) are checked by :func:`output_stem`, so
no name can leave its output folder.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from xmask.errors import DataError

log = logging.getLogger(__name__)

_TEMPORARY = re.compile(r"^\..+?\.(?:(?P<pid>\d+)\.)?[0-9a-f]{32}\.tmp$")
"""A temporary file of :func:`atomic_write_bytes` (the PID is absent from the older form)."""

LEGACY_AGE_S = 60.0
"""Age after which a temporary file without a PID counts as left behind."""


def temporary_path(path: Path) -> Path:
    """A new hidden temporary file name beside ``path`` (``.NAME.PID.HEX.tmp``)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a platform whose folders cannot be opened (Windows)
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes, durable: bool = False) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (never half-written).

    The file gets the permissions of a plain ``open(path, "w")``: ``0o666`` less the umask,
    which the kernel applies when the temporary file is created.

    Args:
        durable: fsync the file before the rename and the folder after it (checkpoints, model
            folders: what must survive a power cut, not only a kill).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        _fsync_folder(path.parent)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def remove_stale_temporaries(folder: str | Path) -> int:
    """Delete the temporary files of :func:`atomic_write_bytes` under ``folder`` (recursively)
    whose process is gone; returns how many."""
    folder = Path(folder)
    removed = 0
    now = time.time()
    for path in folder.rglob(".*.tmp") if folder.is_dir() else ():
        match = _TEMPORARY.match(path.name)
        if match is None or not path.is_file():
            continue
        pid = match.group("pid")
        try:
            stale = not _alive(int(pid)) if pid else now - path.stat().st_mtime > LEGACY_AGE_S
            if stale:
                path.unlink()
                removed += 1
        except OSError:
            continue
    if removed:
        log.info("removed %d temporary file(s) left by interrupted runs in %s", removed, folder)
    return removed


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append one JSON line in a single write, fsync-ed; a torn last line (a kill in the middle
    of a write) is cut off first."""
    path = Path(path)
    line = (json.dumps(record) + "\n").encode("utf-8")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o666)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            content = os.pread(fd, size, 0)
            os.ftruncate(fd, content.rfind(b"\n") + 1)
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file; lines that do not parse (a torn last line) are
    left out with a warning naming the file."""
    path = Path(path)
    records = []
    for number, line in enumerate(path.read_bytes().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            record = None
        if isinstance(record, dict):
            records.append(record)
        else:
            log.warning("%s: line %d is not a JSON object (a torn write?), left out", path, number)
    return records


def check_out_folder(path: str | Path) -> Path:
    """``path`` as an output folder, refused before any work when a file holds its name.

    Raises:
        DataError: ``path`` is an existing file (or anything else but a folder).
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise DataError(path, "--out is not a folder (a file of that name exists)")
    return path


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
