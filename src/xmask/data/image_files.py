"""Image files given one by one, read as the folder format reads them, and a few images of a
split (``--names``, ``--limit``).

Each image's points are found as :class:`~xmask.data.readers.FolderDataset` finds them, in its
own folder: ``NAME.txt``, ``NAME.json`` or ``NAME.mat`` beside it or in ``points/``, or the
entry of the folder's ``points.csv``, ``annotations.xml`` or ``annotations.json``
(:mod:`xmask.data.point_tables`); a label map in ``masks/NAME.png``. Names are the file
names, which must differ.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from xmask.data.image_io import IMAGE_SUFFIXES
from xmask.data.point_tables import PointTable, read_table
from xmask.data.readers import CrowdDataset, FolderDataset, Item
from xmask.errors import DataError, UsageError


class ImageFiles(FolderDataset):
    """The images ``paths``, in that order (module docstring)."""

    key = "files"

    def __init__(self, paths: Sequence[str | Path]) -> None:
        self.paths = [Path(p).expanduser() for p in paths]
        if not self.paths:
            raise UsageError("no image files given")
        super().__init__(self.paths[0].parent, "files")

    def list_items(self) -> list[Item]:
        tables: dict[Path, PointTable | None] = {}
        items, seen = [], {}
        for path in self.paths:
            if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
                raise DataError(path, "not an image file")
            if seen.setdefault(path.name, path) != path:
                raise DataError(path, f"the same name as {seen[path.name]}: give them apart")
            folder = path.parent
            if folder not in tables:
                tables[folder] = read_table(folder)
            items.append(self._item(folder, path, tables[folder]))
        return items


def pick_images(
    dataset: CrowdDataset, names: Sequence[str] | None = None, limit: int | None = None
) -> CrowdDataset:
    """The images of ``dataset`` named (in that order; a file name, or its stem where no other
    image shares it), then at most ``limit`` of them.

    Raises:
        DataError: a name not in the split.
        UsageError: ``limit < 1``.
    """
    if names:
        stems: dict[str, list[int]] = {}
        for i, name in enumerate(dataset.names):
            stems.setdefault(Path(name).stem, []).append(i)
        index = {stem: found[0] for stem, found in stems.items() if len(found) == 1}
        index.update({name: i for i, name in enumerate(dataset.names)})
        unknown = [name for name in names if name not in index]
        if unknown:
            raise DataError(dataset.root, f"not in the {dataset.split} split: {', '.join(unknown)}")
        dataset = dataset.subset([index[name] for name in names])
    if limit is not None:
        if limit < 1:
            raise UsageError(f"--limit must be at least 1, got {limit}")
        dataset = dataset.subset(range(min(limit, len(dataset))))
    return dataset
