"""Stage-2 mask quality on synthetic crowds with exact masks, beside the annotation backends.

    python benchmarks/synthetic_stage2.py [--work runs/synthetic-stage2] [--train-images 96] \\
        [--labeled 0.25] [--threads 2] [--json]

1. Writes ``--train-images`` synthetic crowds of 384×512 px with 50–400 heads (half of them
   with perspective, as the evaluation crowds) into ``WORK/crowds`` with their exact points
   and label maps (:func:`xmask.data.synthetic.make_crowd_folder`, seeds 1000 and 1001, so
   none of them is an evaluation crowd).
2. ``xmask train`` Stage 1 (the ``cpu-base`` recipe on a short schedule) with
   ``--labeled`` of them labeled, the rest unlabeled, into ``WORK/runs/stage1``.
3. ``xmask train`` Stage 2 (``stage2-cpu`` on a short schedule): the labeled crowds are
   supervised by their **exact** masks (``mask.masks``), the unlabeled ones by the teacher's
   pseudo-masks; into ``WORK/runs/stage2``.
4. ``benchmarks/annotate_quality.py`` on its default 8 evaluation crowds (seed 0) with the
   backends ``disc, circle, superpixel, fastsam, fastsam-nnec`` and ``xmask`` (the Stage-2
   teacher segmenting the exact head points), printing its table (``--json``: its JSON).

Each step is skipped when its output exists (training resumes from its last checkpoint), so
the script can be run again after an interruption. FastSAM rows use random weights unless a
checkpoint is passed through ``--quality-args``; their masks then measure speed only.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path

from xmask.cli import main as xmask_main
from xmask.data.synthetic import make_crowd_folder

log = logging.getLogger("synthetic_stage2")

HEIGHT, WIDTH, HEADS = 384, 512, (50, 400)
STAGE1 = [
    "schedule.epochs=16",
    "schedule.steps_per_epoch=25",
    "teacher.warmup_epochs=8",
    "teacher.ramp=0.25",
    "schedule.batch_labeled=4",
    "schedule.batch_unlabeled=4",
]
STAGE2 = [
    "schedule.epochs=10",
    "schedule.steps_per_epoch=25",
    "teacher.warmup_epochs=3",
    "schedule.batch_labeled=4",
    "schedule.batch_unlabeled=4",
]
BACKENDS = "disc,circle,superpixel,fastsam,fastsam-nnec,xmask"


def write_crowds(folder: Path, images: int, labeled: float) -> Path:
    """Training crowds (flat and perspective halves) and their labeled list; returns the list."""
    listing = folder / "labeled.txt"
    if listing.is_file():
        return listing
    names = []
    for perspective, prefix in ((False, "flat_"), (True, "persp_")):
        paths = make_crowd_folder(
            folder,
            images // 2,
            height=HEIGHT,
            width=WIDTH,
            n_heads=HEADS,
            perspective=perspective,
            seed=1000 + int(perspective),
            prefix=prefix,
        )
        names += [path.name for path in paths[: max(1, round(labeled * len(paths)))]]
    tmp = listing.with_suffix(".tmp")
    tmp.write_text("\n".join(names) + "\n", encoding="utf-8")
    tmp.replace(listing)
    return listing


def train(args: list[str]) -> None:
    """``xmask train ARGS --resume``; raises on failure."""
    code = xmask_main(["train", "--resume", *args])
    if code != 0:
        raise SystemExit(f"xmask train {' '.join(args)} failed with exit code {code}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, default=Path("runs/synthetic-stage2"))
    parser.add_argument("--train-images", type=int, default=96)
    parser.add_argument("--labeled", type=float, default=0.25, help="labeled fraction")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quality-args", default="", help="extra annotate_quality.py args")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    crowds = args.work / "crowds"
    listing = write_crowds(crowds, args.train_images, args.labeled)
    runs = args.work / "runs"
    data = ["data.dataset=folder", f"data.root={crowds}", f"data.labeled={listing}"]
    common = [f"out={runs}", f"threads={args.threads}", *data]
    train(["--config", "cpu-base", "name=stage1", *common, *STAGE1])
    train(
        ["--config", "cpu-base", "--config", "stage2-cpu", "name=stage2", *common, *STAGE2,
         f"mask.init={runs / 'stage1'}", f"mask.masks={crowds}"]
    )  # fmt: skip
    quality = Path(__file__).with_name("annotate_quality.py")
    command = [sys.executable, str(quality), "--backends", BACKENDS,
               "--xmask-checkpoint", str(runs / "stage2"), *args.quality_args.split()]  # fmt: skip
    if args.json:
        command.append("--json")
    log.info("quality: %s", " ".join(command))
    subprocess.run(command, check=True)


if __name__ == "__main__":
    main()
