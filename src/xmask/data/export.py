"""Writing any dataset split in the plain folder format (to merge datasets, or to correct
labels with other tools).

Each readable image becomes ``OUT/PREFIX + NAME`` (a hard link to the original file where the
file system allows, else a copy; an image the folder reader would decode differently, because
of its EXIF orientation, is re-encoded as PNG) and its points ``OUT/PREFIX + STEM.txt``, as the
source reader gives them (points outside the image dropped). Unreadable items are reported and
skipped; files already there are kept, so an interrupted export resumes. A name already
holding another file (a second dataset exported into one folder without a ``prefix``) is
reported and skipped, never overwritten nor taken for done.
"""

from __future__ import annotations

import filecmp
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from xmask.data.files import atomic_write_bytes, remove_stale_temporaries, temporary_path
from xmask.data.image_io import load_image, png_bytes
from xmask.data.points_io import write_points_txt
from xmask.data.readers import CrowdDataset
from xmask.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class ExportSummary:
    """What an export did."""

    written: int = 0
    already_done: int = 0
    points: int = 0
    reencoded: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)


def _link_or_copy(source: Path, target: Path) -> None:
    tmp = temporary_path(target)
    try:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _exif_rotated(path: Path) -> bool:
    """The folder reader, which applies EXIF orientation, would rotate this image."""
    return load_image(path, apply_exif=True).exif_rotated


def _exported_from(image: Path, target: Path, apply_exif: bool) -> bool:
    """``target`` (or its re-encoded ``.png``) is the export of ``image``: the same file (a hard
    link), an equal copy, or its pixels re-encoded."""
    if target.is_file():
        return os.path.samefile(image, target) or filecmp.cmp(image, target, shallow=False)
    encoded = target.with_suffix(".png")
    if not encoded.is_file():
        return False
    try:
        return encoded.read_bytes() == png_bytes(load_image(image, apply_exif=apply_exif).array)
    except DataError:
        return False


def export_folder(
    dataset: CrowdDataset, out: str | Path, prefix: str = "", progress: bool = True
) -> ExportSummary:
    """Write ``dataset`` into ``out`` in the folder format (module docstring).

    Args:
        dataset: an opened split (any reader; its resize rule is not applied).
        out: the output folder (created).
        prefix: prepended to every file name (``sha_`` keeps ShanghaiTech A and B apart).
        progress: show a tqdm bar.
    """

    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    summary = ExportSummary()
    for item in tqdm(dataset.items, desc="export", unit="img", disable=not progress):
        name = prefix + item.name
        points_file = out / f"{Path(name).stem}.txt"
        if points_file.is_file():
            if not _exported_from(item.image, out / name, dataset.apply_exif):
                problem = f"{out / name} holds another image (another dataset?): give --prefix"
                log.warning("skipped %s: %s", item.name, problem)
                summary.skipped.append({"name": item.name, "problem": problem})
                continue
            summary.already_done += 1
            continue
        try:
            sample = dataset.load(item)
            rotated = not dataset.apply_exif and _exif_rotated(item.image)
        except DataError as err:
            log.warning("skipped %s: %s", item.name, err)
            summary.skipped.append({"name": item.name, "problem": str(err)})
            continue
        if rotated:
            atomic_write_bytes(out / f"{Path(name).stem}.png", png_bytes(sample.image))
            summary.reencoded += 1
        else:
            _link_or_copy(item.image, out / name)
        write_points_txt(points_file, sample.points)
        summary.written += 1
        summary.points += sample.count
    return summary
