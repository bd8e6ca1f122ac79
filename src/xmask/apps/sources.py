"""What ``xmask predict`` reads: images and videos named by files, folders, glob patterns or a
dataset split, each with the output name it is written under.

Output names keep what tells same-named files apart: a file given by itself is named by its
file name, a file found in a folder or by a pattern by its path relative to that folder (or to
the pattern's fixed leading folders), so ``DCIM/100/IMG_1.jpg`` and ``DCIM/101/IMG_1.jpg``
become ``100/IMG_1`` and ``101/IMG_1``. Names are checked before they become paths
(:func:`output_stem`).
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from xmask.data.files import output_stem
from xmask.data.image_io import IMAGE_SUFFIXES
from xmask.data.readers import natural_key, open_dataset
from xmask.errors import DataError

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
MEDIA_SUFFIXES = IMAGE_SUFFIXES + VIDEO_SUFFIXES


@dataclass(frozen=True)
class Source:
    """One image or video to predict on.

    Attributes:
        name: its name: the file name, or the path relative to the folder it was found in.
        path: the file.
        apply_exif: rotate an image by its EXIF orientation tag when decoding.
    """

    name: str
    path: Path
    apply_exif: bool = True

    @property
    def is_video(self) -> bool:
        """The file is a video (by its suffix)."""
        return self.path.suffix.lower() in VIDEO_SUFFIXES

    @property
    def stem(self) -> str:
        """The output name (:func:`output_stem`)."""
        return output_stem(self.name)


def _media(paths: Sequence[Path]) -> list[Path]:
    files = [p for p in paths if p.suffix.lower() in MEDIA_SUFFIXES and p.is_file()]
    return sorted(files, key=lambda p: natural_key(str(p)))


def _fixed_base(pattern: str) -> Path:
    """The leading folders of a glob pattern that hold no wildcard."""
    parts = Path(pattern).parts
    first = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    return Path(*parts[:first]) if first else Path()


def _in_folder(folder: Path, recursive: bool) -> list[Path]:
    """Media files of a folder (with ``recursive``, of its sub-folders too).

    Raises:
        DataError: the folder holds none directly but its sub-folders do, without ``recursive``.
    """
    found = _media(list(folder.rglob("*") if recursive else folder.iterdir()))
    if not found and not recursive and _media(list(folder.rglob("*"))):
        raise DataError(
            folder, "no images or videos directly in this folder, only in its sub-folders: "
            "add --recursive",
        )  # fmt: skip
    return found


def find_sources(specs: Sequence[str | Path], recursive: bool = False) -> list[Source]:
    """The images and videos named by files, folders (their sub-folders too with
    ``recursive``) or glob patterns (``**`` recurses), in natural order within each; names as
    the module docstring says.

    Raises:
        DataError: a path that does not exist, a pattern that matches no image or video, or a
            folder whose images all lie in sub-folders (without ``recursive``).
    """
    sources: list[Source] = []
    for spec in specs:
        path = Path(spec).expanduser()
        if path.is_file():
            sources.append(Source(path.name, path))
            continue
        if path.is_dir():
            base, found = path, _in_folder(path, recursive)
        elif glob.has_magic(str(spec)):
            base = _fixed_base(str(path))
            found = _media([Path(p) for p in glob.glob(str(path), recursive=True)])
            if not found:
                raise DataError(path, "the pattern matches no image or video")
        else:
            raise DataError(path, "no such file, folder or pattern")
        sources += [Source(p.relative_to(base).as_posix(), p) for p in found]
    return sources


def dataset_sources(dataset: str, root: str | Path | None, split: str) -> list[Source]:
    """The images of a dataset split (their ground truth is not read); ``root`` None: the
    configured folder (:func:`xmask.data.locations.dataset_root`)."""

    opened = open_dataset(dataset, root, split)
    return [Source(item.name, item.image, opened.apply_exif) for item in opened.items]
