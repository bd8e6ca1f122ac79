"""Annotation speed and memory: the superpixel backend over a whole dataset split.

    python benchmarks/annotate_speed.py --dataset sha --root ../shared/data/shanghaitech \\
        --split test --out /tmp/masks-sha-test

Runs ``xmask annotate`` (fresh output folder), then prints wall seconds, the backend's own
seconds, heads, empty masks, and the peak resident memory of the process, as JSON.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", default="sha")
    parser.add_argument("--root", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--backend", default="superpixel")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    dataset = open_dataset(args.dataset, args.root, args.split)
    start = time.perf_counter()
    summary = annotate_dataset(dataset, Path(args.out), args.backend, progress=False)
    wall = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report = {
        "images": summary.images,
        "heads": summary.heads,
        "empty_masks": summary.empty_masks,
        "fallback_masks": summary.fallback_masks,
        "backend_seconds": round(summary.seconds, 1),
        "wall_seconds": round(wall, 1),
        "peak_rss_mb": round(peak_mb),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
