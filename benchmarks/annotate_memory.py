"""Peak memory and time of ``xmask annotate`` (superpixel backend) on one large, dense image.

    python benchmarks/annotate_memory.py [--size 8000x6000] [--heads 7452] [--image FILE]

Writes one synthetic crowd (:func:`xmask.data.synthetic.make_crowd`, seed 0; or ``--image``
with ``--points`` in the folder format) to a temporary folder, then runs ``xmask annotate
--dataset folder`` on it in a child process, as a user runs it, and prints one JSON object:
the image size, heads, heads that got a mask, the command's wall seconds and its peak resident
memory (``ru_maxrss`` of the child). The issue's target: under 3 GiB for 8000×6000 with about
7,450 heads (``predict`` of the same image peaks near 2.3 GiB).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from xmask.data.image_io import load_label_map
from xmask.data.points_io import write_points_txt
from xmask.data.synthetic import make_crowd


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="8000x6000", help="WxH of the synthetic image")
    parser.add_argument("--heads", type=int, default=7452)
    parser.add_argument("--image", help="an image file instead of a synthetic one")
    parser.add_argument("--points", help="its points (x y per line), with --image")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="xmask-annotate-memory-"))
    try:
        data = folder / "data"
        data.mkdir()
        if args.image:
            shutil.copyfile(args.image, data / f"image{Path(args.image).suffix}")
            shutil.copyfile(args.points, data / "image.txt")
        else:
            width, height = (int(v) for v in args.size.lower().split("x"))
            crowd = make_crowd(height, width, args.heads, seed=0)
            Image.fromarray(crowd.image).save(data / "image.jpg", quality=90)
            write_points_txt(data / "image.txt", crowd.points)
            del crowd
        command = [sys.executable, "-m", "xmask", "annotate", "--dataset", "folder",
                   "--root", str(data), "--out", str(folder / "out"),
                   "--max-image-pixels", "200000000"]  # fmt: skip
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        labels = load_label_map(folder / "out" / "masks" / "image.png")
        areas = np.bincount(labels.ravel())[1:]
        report = {
            "size": f"{labels.shape[1]}x{labels.shape[0]}",
            "heads": int(len(np.loadtxt(data / "image.txt", ndmin=2))),
            "heads_with_a_mask": int((areas > 0).sum()),
            "seconds": round(seconds, 1),
            "peak_rss_gib": round(peak_mb / 1024, 2),
        }
        print(json.dumps(report, indent=2))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
