"""Statistics of a dataset split: images, points, counts, sizes and problems found."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
from tqdm.auto import tqdm

from xmask.data.readers import CrowdDataset
from xmask.errors import DataError
from xmask.geometry.points import duplicate_mask, inside_image

log = logging.getLogger(__name__)


@dataclass
class SplitStats:
    """What ``xmask data stats`` reports (``--json`` prints :meth:`to_dict`).

    ``points`` counts every point the ground-truth files hold; ``points_not_finite`` and
    ``points_outside`` are among them (readers drop those). ``duplicate_points`` counts points
    whose exact coordinates another point of the same image repeats (a pair counts 2);
    ``duplicate_copies`` only the copies after the first. Count statistics are over images read.
    """

    dataset: str
    split: str
    images: int = 0
    points: int = 0
    count_min: int = 0
    count_median: float = 0.0
    count_max: int = 0
    height_min: int = 0
    height_max: int = 0
    width_min: int = 0
    width_max: int = 0
    common_sizes: list[dict[str, int]] = field(default_factory=list)
    greyscale_images: int = 0
    greyscale_names: list[str] = field(default_factory=list)
    duplicate_points: int = 0
    duplicate_copies: int = 0
    points_not_finite: int = 0
    points_outside: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-serialisable dict."""
        return asdict(self)


def split_stats(dataset: CrowdDataset, progress: bool = True) -> SplitStats:
    """Read every image and point file of ``dataset``; bad items are reported and skipped."""
    stats = SplitStats(dataset=dataset.key, split=dataset.split)
    counts: list[int] = []
    sizes: Counter[tuple[int, int]] = Counter()
    for item in tqdm(dataset.items, desc=f"{dataset.key} {dataset.split}", disable=not progress):
        try:
            raw = dataset.read_raw(item)
        except DataError as err:
            log.warning("skipped %s: %s", item.name, err)
            stats.skipped.append({"name": item.name, "problem": str(err)})
            continue
        points = raw.points
        finite = np.isfinite(points).all(axis=1)
        counts.append(len(points))
        sizes[raw.image.size] += 1
        stats.points_not_finite += int((~finite).sum())
        stats.points_outside += int((finite & ~inside_image(points, raw.image.size)).sum())
        stats.duplicate_points += int(duplicate_mask(points[finite], include_first=True).sum())
        stats.duplicate_copies += int(duplicate_mask(points[finite]).sum())
        if raw.image.greyscale:
            stats.greyscale_names.append(item.name)
    _summarise(stats, counts, sizes)
    return stats


def _summarise(stats: SplitStats, counts: list[int], sizes: Counter[tuple[int, int]]) -> None:
    stats.images = len(counts)
    stats.points = int(sum(counts))
    stats.greyscale_images = len(stats.greyscale_names)
    if not counts:
        return
    stats.count_min, stats.count_max = int(min(counts)), int(max(counts))
    stats.count_median = float(np.median(counts))
    heights = [h for h, _ in sizes]
    widths = [w for _, w in sizes]
    stats.height_min, stats.height_max = min(heights), max(heights)
    stats.width_min, stats.width_max = min(widths), max(widths)
    stats.common_sizes = [
        {"height": h, "width": w, "images": n} for (h, w), n in sizes.most_common(5)
    ]


def format_stats(stats: SplitStats) -> str:
    """Human-readable report."""
    lines = [
        f"dataset {stats.dataset}, split {stats.split}",
        f"  images            {stats.images:,}",
        f"  points            {stats.points:,}",
        f"  per image         min {stats.count_min:,} / median {stats.count_median:g} / "
        f"max {stats.count_max:,}",
        f"  height            {stats.height_min}..{stats.height_max} px",
        f"  width             {stats.width_min}..{stats.width_max} px",
        "  common sizes      "
        + ", ".join(f"{s['width']}×{s['height']} ({s['images']})" for s in stats.common_sizes),
        f"  greyscale images  {stats.greyscale_images}",
        f"  duplicate points  {stats.duplicate_points} ({stats.duplicate_copies} extra copies)",
        f"  not finite        {stats.points_not_finite}",
        f"  outside image     {stats.points_outside}",
        f"  skipped items     {len(stats.skipped)}",
    ]
    lines += [f"    {s['name']}: {s['problem']}" for s in stats.skipped]
    return "\n".join(lines)
