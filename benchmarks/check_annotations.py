"""Independent check of an annotation folder against the dataset's own point files.

Uses only numpy, scipy and Pillow (none of xmask's annotation or geometry code): for every image
of the split, ``DIR/masks/STEM.png`` must exist with the image's size; ``DIR/points/STEM.txt``
must hold the dataset's points (to the file's two decimals, float32); every head whose nearest other
point is at least 1 px away must own the pixel its point lies in (counted; as are the heads alone
in their pixel without it, and the empty masks: a pixel holding two points can belong to one of
them only, so those are the only heads that may lack their pixel or any mask); and no pixel
labelled ``k``
may lie farther from point ``k`` than ``k``'s NNEC radius (distance to the nearest point at a
different position, at least 3 px, at most half the shorter image side; one point alone: half
the shorter side).

    python benchmarks/check_annotations.py --root ../shared/data/shanghaitech --split test \\
        --dir masks-sha-test
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.io import loadmat
from scipy.spatial import cKDTree


def radii(points: np.ndarray, h: int, w: int) -> np.ndarray:
    half = 0.5 * min(h, w)
    unique, inverse = np.unique(points, axis=0, return_inverse=True)
    if len(unique) < 2:
        return np.full(len(points), half)
    dist, _ = cKDTree(unique).query(unique, k=2)
    return np.clip(dist[:, 1], 3.0, half)[inverse.ravel()]


def check_image(image: Path, gt: Path, folder: Path) -> dict[str, int]:
    points = loadmat(gt)["image_info"][0, 0][0, 0][0].astype(np.float64).reshape(-1, 2)
    w, h = Image.open(image).size
    labels = np.asarray(Image.open(folder / "masks" / f"{image.stem}.png")).astype(np.int64)
    assert labels.shape == (h, w), f"{image.name}: mask {labels.shape} vs image {(h, w)}"
    written = np.loadtxt(folder / "points" / f"{image.stem}.txt", ndmin=2).reshape(-1, 2)
    assert np.abs(written - points).max(initial=0) <= 0.006, f"{image.name}: points"
    assert labels.max(initial=0) <= len(points), f"{image.name}: label beyond the points"
    cols = np.clip(np.floor(points[:, 0]).astype(int), 0, w - 1)
    rows = np.clip(np.floor(points[:, 1]).astype(int), 0, h - 1)
    nearest = cKDTree(points).query(points, k=2)[0][:, 1] if len(points) > 1 else np.array([np.inf])
    isolated = nearest >= 1.0
    cell = rows * w + cols
    shares_pixel = np.bincount(cell, minlength=h * w)[cell] > 1
    own = labels[rows, cols] == np.arange(1, len(points) + 1)
    empty = np.bincount(labels.ravel(), minlength=len(points) + 1)[1:] == 0
    ys, xs = np.nonzero(labels)
    k = labels[ys, xs] - 1
    dist = np.hypot(xs + 0.5 - points[k, 0], ys + 0.5 - points[k, 1])
    outside = int((dist > radii(points, h, w)[k] + 1e-4).sum())
    return {
        "points": len(points),
        "isolated": int(isolated.sum()),
        "isolated_without_own_pixel": int((isolated & ~own).sum()),
        "sharing_a_pixel": int(shares_pixel.sum()),
        "alone_in_pixel_without_own_pixel": int((~shares_pixel & ~own).sum()),
        "empty_masks": int(empty.sum()),
        "empty_masks_alone_in_pixel": int((empty & ~shares_pixel).sum()),
        "pixels_outside_circle": outside,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", required=True, help="folder holding part_A")
    parser.add_argument("--part", default="A")
    parser.add_argument("--split", default="test")
    parser.add_argument("--dir", required=True, help="annotation folder")
    args = parser.parse_args()
    base = Path(args.root) / f"part_{args.part}" / f"{args.split}_data"
    totals = {"maps": 0, "points": 0, "isolated": 0}
    totals |= {"isolated_without_own_pixel": 0, "pixels_outside_circle": 0}
    totals |= {"sharing_a_pixel": 0, "alone_in_pixel_without_own_pixel": 0}
    totals |= {"empty_masks": 0, "empty_masks_alone_in_pixel": 0}
    for image in sorted((base / "images").glob("*.jpg")):
        row = check_image(image, base / "ground-truth" / f"GT_{image.stem}.mat", Path(args.dir))
        totals["maps"] += 1
        for key, value in row.items():
            totals[key] += value
    print(json.dumps(totals, indent=2))


if __name__ == "__main__":
    main()
