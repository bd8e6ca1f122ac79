"""Dataset readers: ShanghaiTech A/B, UCF-QNRF, JHU-Crowd++ and a plain folder format.

Each reader is a map-style dataset (``len``, ``[i]``, usable by a torch ``DataLoader``) of
:class:`~xmask.types.Sample`. It lists its items once (cheap: file names only) and decodes an
image and its points when indexed. ``max_short_side=S`` resizes images whose shorter side
exceeds ``S`` (the paper: 1536 for UCF-QNRF, 2048 for JHU-Crowd++) and scales points with them.

Layouts (``root`` is the dataset folder):

- ``sha`` / ``shb``: ``part_{A,B}/{train,test}_data/images/IMG_n.jpg`` and
  ``.../ground-truth/GT_IMG_n.mat`` (key ``image_info``). ``root`` may be the folder holding
  ``part_A`` or ``part_A`` itself.
- ``ucf``: ``{Train,Test}/img_NNNN.jpg`` and ``img_NNNN_ann.mat`` (key ``annPoints``).
- ``jhu``: ``{train,val,test}/images/NNNN.jpg`` and ``.../gt/NNNN.txt`` (``x y w h o b``).
- ``folder``: images in ``root/SPLIT/`` if that folder exists, else in ``root/`` (or its
  ``images/`` sub-folder); points per image in ``STEM.txt`` (``x y`` lines), ``STEM.json``
  (xmask's JSON or LabelMe) or ``STEM.mat`` (ShanghaiTech) beside the image or in ``points/``,
  or all of them in one ``points.csv`` (``image,x,y``), CVAT ``annotations.xml`` or COCO
  keypoints ``annotations.json`` (:mod:`xmask.data.point_tables`); optional instance label maps
  in ``masks/STEM.png`` (16-bit, 0 background, k = k-th point).
  An image without a point file is an unlabeled image: training draws it for Mean Teacher;
  reading its points (evaluation, statistics, annotation, a labeled list) is an error.
"""

from __future__ import annotations

import copy
import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image

from xmask.data.image_io import IMAGE_SUFFIXES, LoadedImage, load_image, load_label_map
from xmask.data.locations import dataset_root
from xmask.data.point_formats import read_image_points
from xmask.data.point_tables import PointTable, read_table, warn_unknown_names
from xmask.data.points_io import clean_points, read_mat_points, read_txt_points
from xmask.errors import DataError, UsageError
from xmask.geometry.points import scale_points
from xmask.types import Sample

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Item:
    """Where one sample's files are.

    Attributes:
        name: image file name (the key of split lists).
        image: image file.
        points: ground-truth point file (``None``: the points come from ``preset_points``, or
            the image has none: an unlabeled image of the folder format).
        labels: optional instance label map file.
        preset_points: points already read (one CSV for many images).
    """

    name: str
    image: Path
    points: Path | None
    labels: Path | None = None
    preset_points: np.ndarray | None = None

    @property
    def annotated(self) -> bool:
        """The image has ground-truth points (a file, or a row set of a CSV)."""
        return self.points is not None or self.preset_points is not None


def natural_key(name: str) -> list[object]:
    """Sort key that orders ``IMG_2`` before ``IMG_10``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DataError(folder, "folder not found")
    files = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    return sorted(files, key=lambda p: natural_key(p.name))


@dataclass(frozen=True)
class RawSample:
    """An image and the points its file holds, before validation (used by statistics)."""

    image: LoadedImage
    points: np.ndarray
    item: Item


class CrowdDataset(ABC):
    """A split of a crowd dataset as a sequence of :class:`~xmask.types.Sample`.

    Args:
        root: dataset folder (layout in the module docstring).
        split: ``"train"`` or ``"test"`` (``"val"`` for JHU-Crowd++).
        names: keep only these image names, in this order (e.g. a labeled list).
        max_short_side: resize images whose shorter side exceeds this many pixels.
    """

    key: ClassVar[str]
    split_names: ClassVar[tuple[str, ...] | None] = ("train", "test")
    """Accepted split names; ``None`` accepts any."""
    apply_exif: ClassVar[bool] = False

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        names: Sequence[str] | None = None,
        max_short_side: int | None = None,
    ) -> None:
        if self.split_names is not None and split not in self.split_names:
            raise UsageError(f"{self.key}: split must be one of {self.split_names}, got {split!r}")
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DataError(self.root, "dataset root folder not found")
        self.split = split
        self.max_short_side = max_short_side
        self.items = self._select(self.list_items(), names)

    def _select(self, items: list[Item], names: Sequence[str] | None) -> list[Item]:
        if names is None:
            return items
        by_name = {item.name: item for item in items}
        unknown = [name for name in names if name not in by_name]
        if unknown:
            shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise DataError(
                self.root, f"{len(unknown)} listed image(s) not in the {self.split} split: {shown}"
            )
        return [by_name[name] for name in names]

    @abstractmethod
    def list_items(self) -> list[Item]:
        """All items of the split, in natural name order."""

    @abstractmethod
    def read_points(self, item: Item) -> np.ndarray:
        """The raw ``N×2 float64`` ``(x, y)`` points of one item."""

    def subset(self, indices: Sequence[int]) -> CrowdDataset:
        """The same split restricted to ``indices`` (e.g. a :class:`~xmask.data.splits.SemiSplit`
        part), in that order."""
        part = copy.copy(self)
        part.items = [self.items[i] for i in indices]
        return part

    @property
    def names(self) -> list[str]:
        """Image names, in dataset order."""
        return [item.name for item in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        return self.load(self.items[index])

    def read_raw(self, item: Item) -> RawSample:
        """Decode the image and read its points without dropping or resizing anything."""
        image = load_image(item.image, apply_exif=self.apply_exif)
        return RawSample(image=image, points=self.read_points(item), item=item)

    def load(self, item: Item, points_optional: bool = False) -> Sample:
        """Decode and validate one item; resize by ``max_short_side`` if set.

        Args:
            item: one of :attr:`items`.
            points_optional: an image without ground truth gives no points instead of an
                error (unlabeled training images, whose points are never read).

        Raises:
            DataError: the image or its ground truth is missing or unusable.
        """
        if not item.annotated and points_optional:
            image = load_image(item.image, apply_exif=self.apply_exif)
            empty = np.zeros((0, 2), dtype=np.float64)
            return self._sample(RawSample(image=image, points=empty, item=item))
        return self._sample(self.read_raw(item))

    def _sample(self, raw: RawSample) -> Sample:
        item = raw.item
        size = raw.image.size
        points, dropped = clean_points(raw.points, size, item.points or item.image)
        labels = load_label_map(item.labels, size) if item.labels is not None else None
        sample = Sample(
            image=raw.image.array,
            points=points,
            name=item.name,
            labels=labels,
            path=item.image,
            greyscale=raw.image.greyscale,
            dropped_points=dropped,
        )
        return resize_short_side(sample, self.max_short_side)


def resize_short_side(sample: Sample, max_short_side: int | None) -> Sample:
    """Shrink a sample so its shorter side is at most ``max_short_side``; points follow.

    The image is resized with antialiased bilinear interpolation, the label map with nearest
    neighbour; points are scaled by the exact per-axis ratios of the new size.
    """
    h, w = sample.size
    if max_short_side is None or min(h, w) <= max_short_side:
        return sample
    factor = max_short_side / min(h, w)
    new_h, new_w = max(1, round(h * factor)), max(1, round(w * factor))
    image = np.asarray(
        Image.fromarray(sample.image).resize((new_w, new_h), Image.Resampling.BILINEAR)
    )
    labels = None
    if sample.labels is not None:
        small = Image.fromarray(sample.labels).resize((new_w, new_h), Image.Resampling.NEAREST)
        labels = np.asarray(small).astype(np.int32)
    return Sample(
        image=image,
        points=scale_points(sample.points, new_w / w, new_h / h),
        name=sample.name,
        labels=labels,
        path=sample.path,
        greyscale=sample.greyscale,
        dropped_points=sample.dropped_points,
        scale=factor,
    )


class ShanghaiTech(CrowdDataset):
    """ShanghaiTech part A or B (``key`` ``sha`` / ``shb``)."""

    part: ClassVar[str]

    def _split_dir(self) -> Path:
        base = self.root / f"part_{self.part}"
        base = base if base.is_dir() else self.root
        folder = base / f"{self.split}_data"
        if not folder.is_dir():
            raise DataError(
                folder, f"not found: expected part_{self.part}/{{train,test}}_data/ under the root"
            )
        return folder

    def list_items(self) -> list[Item]:
        folder = self._split_dir()
        return [
            Item(p.name, p, folder / "ground-truth" / f"GT_{p.stem}.mat")
            for p in _images_in(folder / "images")
        ]

    def read_points(self, item: Item) -> np.ndarray:
        assert item.points is not None
        return read_mat_points(item.points, "image_info")


class ShanghaiTechA(ShanghaiTech):
    key = "sha"
    part = "A"


class ShanghaiTechB(ShanghaiTech):
    key = "shb"
    part = "B"


class UCFQNRF(CrowdDataset):
    """UCF-QNRF (``key`` ``ucf``); the paper limits the shorter side to 1536."""

    key = "ucf"

    def list_items(self) -> list[Item]:
        folder = self.root / self.split.capitalize()
        return [Item(p.name, p, p.with_name(f"{p.stem}_ann.mat")) for p in _images_in(folder)]

    def read_points(self, item: Item) -> np.ndarray:
        assert item.points is not None
        return read_mat_points(item.points, "annPoints")


class JHUCrowd(CrowdDataset):
    """JHU-Crowd++ (``key`` ``jhu``); the paper limits the shorter side to 2048."""

    key = "jhu"
    split_names = ("train", "val", "test")

    def list_items(self) -> list[Item]:
        folder = self.root / self.split
        return [
            Item(p.name, p, folder / "gt" / f"{p.stem}.txt") for p in _images_in(folder / "images")
        ]

    def read_points(self, item: Item) -> np.ndarray:
        assert item.points is not None
        return read_txt_points(item.points)


class FolderDataset(CrowdDataset):
    """A user's own images and point files (``key`` ``folder``; layout in the module docstring).

    Any split name is accepted: ``root/SPLIT`` is used when it exists, else ``root``. Points
    follow the EXIF-rotated image, as annotation tools display it.
    """

    key = "folder"
    split_names = None
    apply_exif = True

    def _base(self) -> Path:
        candidate = self.root / self.split
        return candidate if candidate.is_dir() else self.root

    def list_items(self) -> list[Item]:
        base = self._base()
        image_dir = base / "images" if (base / "images").is_dir() else base
        table = read_table(base)
        images = _images_in(image_dir)
        if table is not None:
            warn_unknown_names(table, images)
        return [self._item(base, image, table) for image in images]

    @staticmethod
    def _item(base: Path, image: Path, table: PointTable | None) -> Item:
        mask = base / "masks" / f"{image.stem}.png"
        labels = mask if mask.is_file() else None
        if table is not None and table.complete:
            preset = table.points.get(image.name, np.zeros((0, 2)))
            return Item(image.name, image, None, labels, preset)
        candidates = [
            folder / f"{image.stem}{suffix}"
            for folder in (image.parent, base / "points")
            for suffix in (".txt", ".json", ".mat")
        ]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None and table is not None:
            return Item(image.name, image, None, labels, table.points.get(image.name))
        return Item(image.name, image, found, labels)

    def read_points(self, item: Item) -> np.ndarray:
        if item.preset_points is not None:
            return item.preset_points
        if item.points is None:
            raise DataError(
                item.image,
                "no point file (NAME.txt, NAME.json or NAME.mat beside the image or in points/, "
                "or an entry in the folder's points.csv, annotations.xml or annotations.json); "
                "only unlabeled training images may go without",
            )
        return read_image_points(item.points)


DATASETS: dict[str, type[CrowdDataset]] = {
    cls.key: cls for cls in (ShanghaiTechA, ShanghaiTechB, UCFQNRF, JHUCrowd, FolderDataset)
}
ALIASES = {
    "shanghaitech-a": "sha",
    "shanghaitech_a": "sha",
    "shha": "sha",
    "shanghaitech-b": "shb",
    "shanghaitech_b": "shb",
    "shhb": "shb",
    "qnrf": "ucf",
    "ucf-qnrf": "ucf",
    "ucf_qnrf": "ucf",
    "jhu++": "jhu",
    "jhu-crowd": "jhu",
}


def dataset_names() -> Iterable[str]:
    """Keys accepted by :func:`open_dataset`."""
    return list(DATASETS)


def dataset_key(name: str) -> str:
    """The reader key of a dataset name or alias.

    Raises:
        UsageError: an unknown name.
    """
    key = ALIASES.get(name.lower(), name.lower())
    if key not in DATASETS:
        raise UsageError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    return key


def open_dataset(
    name: str, root: str | Path | None = None, split: str = "train", **kwargs: object
) -> CrowdDataset:
    """Open a dataset split by key (``sha``, ``shb``, ``ucf``, ``jhu``, ``folder``) or alias;
    ``root`` None: the folder configured for it (:func:`xmask.data.locations.dataset_root`)."""
    key = dataset_key(name)
    return DATASETS[key](dataset_root(key, root), split, **kwargs)  # type: ignore[arg-type]
