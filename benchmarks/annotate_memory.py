"""Peak memory and time of ``xmask annotate`` (superpixel backend) on one large, dense image.

    python benchmarks/annotate_memory.py [--size 8000x6000] [--heads 7452] [--image FILE]

Writes one synthetic crowd (:func:`xmask.data.synthetic.make_crowd`, seed 0; or ``--image``
with ``--points`` in the folder format) to a temporary folder, in a child process, then runs
``xmask annotate --dataset folder`` on it in another child, as a user runs it, and prints one
JSON object: the image size, heads, heads that got a mask, the command's wall seconds and its
peak resident memory (``ru_maxrss`` of that child alone, from ``wait4``; this process stays
small, since a forked child's peak counts the memory of its parent at the fork). The issue's
target: under 3 GiB for 8000×6000 with about 7,450 heads (``predict`` of the same image peaks
near 2.3 GiB).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_image(folder: Path, size: str, heads: int) -> None:
    """The synthetic crowd in the folder format (run in a child process)."""
    from xmask.data.points_io import write_points_txt
    from xmask.data.synthetic import make_crowd

    width, height = (int(v) for v in size.lower().split("x"))
    crowd = make_crowd(height, width, heads, seed=0)
    Image.fromarray(crowd.image).save(folder / "image.jpg", quality=90)
    write_points_txt(folder / "image.txt", crowd.points)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="8000x6000", help="WxH of the synthetic image")
    parser.add_argument("--heads", type=int, default=7452)
    parser.add_argument("--image", help="an image file instead of a synthetic one")
    parser.add_argument("--points", help="its points (x y per line), with --image")
    parser.add_argument("--make", metavar="DIR", help=argparse.SUPPRESS)  # the child's work
    args = parser.parse_args()
    if args.make:
        make_image(Path(args.make), args.size, args.heads)
        return
    folder = Path(tempfile.mkdtemp(prefix="xmask-annotate-memory-"))
    try:
        data = folder / "data"
        data.mkdir()
        if args.image:
            shutil.copyfile(args.image, data / f"image{Path(args.image).suffix}")
            shutil.copyfile(args.points, data / "image.txt")
        else:
            make = [sys.executable, __file__, "--make", str(data), "--size", args.size,
                    "--heads", str(args.heads)]  # fmt: skip
            subprocess.run(make, check=True)
        command = [sys.executable, "-m", "xmask", "annotate", "--dataset", "folder",
                   "--root", str(data), "--out", str(folder / "out")]  # fmt: skip
        start = time.perf_counter()
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"xmask annotate failed: {os.waitstatus_to_exitcode(status)}")
        labels = np.asarray(Image.open(folder / "out" / "masks" / "image.png")).astype(np.int64)
        areas = np.bincount(labels.ravel())[1:]
        report = {
            "size": f"{labels.shape[1]}x{labels.shape[0]}",
            "heads": len(np.loadtxt(data / "image.txt", ndmin=2)),
            "heads_with_a_mask": int((areas > 0).sum()),
            "seconds": round(seconds, 1),
            "peak_rss_gib": round(usage.ru_maxrss / 1024**2, 2),
        }
        print(json.dumps(report, indent=2))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
