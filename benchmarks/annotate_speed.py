"""Annotation speed and memory: the superpixel backend over a whole dataset split.

    python benchmarks/annotate_speed.py --dataset sha --root ../shared/data/shanghaitech \\
        --split test --out /tmp/masks-sha-test

Runs ``xmask annotate`` (fresh output folder), then prints wall seconds, the backend's own
seconds, heads, empty masks, and the peak resident memory of the process, as JSON.

Memory flat in the number of heads: the ``--sparse-first`` images with the fewest heads run
first (``peak_rss_sparse_mb``, with their largest head count), then the rest of the split,
densest image included, in the same resumable call (``peak_rss_mb``, with the largest head
count of the split). The peak resident size never goes down, so a second figure close to the
first means the dense images needed no more memory than the sparse ones.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import time
from pathlib import Path

from xmask.annotate.pipeline import annotate_dataset
from xmask.data.readers import open_dataset


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", default="sha")
    parser.add_argument("--root", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--backend", default="superpixel")
    parser.add_argument("--out", required=True)
    parser.add_argument("--sparse-first", type=int, default=10, metavar="K")
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    dataset = open_dataset(args.dataset, args.root, args.split)
    counts = [len(dataset.read_points(item)) for item in dataset.items]
    sparse = sorted(range(len(counts)), key=lambda i: counts[i])[: args.sparse_first]
    start = time.perf_counter()
    first = annotate_dataset(dataset.subset(sparse), Path(args.out), args.backend, progress=False)
    sparse_mb = _peak_rss_mb()
    rest = annotate_dataset(dataset, Path(args.out), args.backend, progress=False)
    wall = time.perf_counter() - start
    report = {
        "images": first.images + rest.images,
        "heads": first.heads + rest.heads,
        "empty_masks": first.empty_masks + rest.empty_masks,
        "fallback_masks": first.fallback_masks + rest.fallback_masks,
        "skipped": first.skipped + rest.skipped,
        "backend_seconds": round(first.seconds + rest.seconds, 1),
        "wall_seconds": round(wall, 1),
        "sparse_images": len(sparse),
        "sparse_max_heads": max((counts[i] for i in sparse), default=0),
        "peak_rss_sparse_mb": round(sparse_mb),
        "max_heads": max(counts, default=0),
        "peak_rss_mb": round(_peak_rss_mb()),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
