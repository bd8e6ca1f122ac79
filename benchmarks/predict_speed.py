"""Wall time of ``xmask predict`` as a user runs it, and its memory on a huge image.

    python benchmarks/predict_speed.py [--model NAME_OR_PATH] [--images DIR] [--work DIR]
                                       [--backend torch|onnx|onnx-int8] [--mask-grid 1|2|4]

Three measurements, each a fresh ``xmask predict`` process (start-up included: Python, torch,
the model; PyTorch's own thread count, the CLI's default):

1. **One image**: one 1024×768 image (the first ShanghaiTech B test image when ``--images``
   points at ``part_B/test_data/images``, else a synthetic crowd of 150 heads), wall time of
   the whole command.
2. **A folder of 50** such images (the first 50 of ``--images``, else synthetic): wall time
   of the command, and the per-image time after start-up two ways: the mean of
   ``summary.json``'s per-image seconds (reading the file to writing its last output), and
   ``(wall(50) − wall(1)) / 49``.
3. **A huge image**: a synthetic 6000×4000 crowd of 5,000 heads, ``xmask predict`` on it (the
   model's own heads, network in tiles, segmentation window by window) and, in a second
   process, :meth:`xmask.inference.predictor.Predictor.segment_points` with the 5,000 drawn heads.
   For both: wall time and the peak resident memory of the process (its own ``ru_maxrss``).

With ``--compare N``, only this instead: ``xmask predict`` over the first ``N`` images,
``--pipeline`` (read, network and post-processing overlapped, :mod:`xmask.apps.overlap`)
against ``--no-pipeline``, each with PyTorch on 1 and on 2 threads (``OMP_NUM_THREADS``), the
four alternating for ``--rounds`` rounds, each a fresh process: seconds per image after
start-up (``summary.json``'s ``seconds``, first read to last output, over the images), the
wall time, and the load average before each run. Then the same four on a video of the first
``--video-frames`` (12) of the images as frames (H.264): frames per second of
:func:`xmask.apps.video.predict_video` after a warm-up frame (masks, overlays, encoding).

``--backend`` runs every measurement with that backend of ``xmask predict`` (onnx-int8: a model
folder exported with ``--int8``). Prints one JSON object; nothing is asserted.
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
from dataclasses import dataclass
from pathlib import Path

PREDICT = """
import resource, sys
from xmask.cli import main
code = main(sys.argv[1:])
print("PEAK_RSS_MB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)
sys.exit(code)
"""

SEGMENT_GIVEN = """
import json, resource, sys, time
import numpy as np
from xmask.data.image_io import load_image
from xmask.inference.predictor import Predictor
model, image_path, points_path = sys.argv[1:4]
start = time.perf_counter()
predictor = Predictor.load(None if model == "default" else model, device="cpu")
image = load_image(image_path).array
points = np.loadtxt(points_path, dtype=np.float32).reshape(-1, 2)
prediction = predictor.segment_points(image, points)
print(json.dumps({
    "seconds": time.perf_counter() - start,
    "heads": len(points),
    "segmented": int((prediction.areas > 0).sum()),
    "network_s": prediction.network_s,
    "post_s": prediction.post_s,
    "tiles": prediction.tiles,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
}))
"""

VIDEO = """
import json, os, sys, time
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI sets it
from xmask.apps.sources import find_sources
from xmask.apps.video import predict_video
from xmask.inference.predictor import Predictor
model, video, out, pipeline, backend, grid = sys.argv[1:7]
predictor = Predictor.load(
    None if model == "default" else model, device="cpu", backend=backend, mask_grid=int(grid)
)
source = find_sources([video])[0]
predict_video(predictor, source, out + "-warm", every=1000, progress=False)
start = time.perf_counter()
result = predict_video(predictor, source, out, pipeline=pipeline == "1", progress=False)
print(json.dumps({"frames": len(result.rows), "seconds": time.perf_counter() - start}))
"""


def _child(args: list[str]) -> tuple[float, str]:
    """Run a child process; returns (wall seconds, stdout)."""
    start = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode not in (0, 3):
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return wall, done.stdout


@dataclass(frozen=True)
class Setup:
    """What every measured ``xmask predict`` runs: the model (``"default"``: the shipped one),
    the backend and the mask grid."""

    model: str
    backend: str
    grid: str


def _predict(setup: Setup, source: Path, out: Path, *extra: str) -> tuple[float, float]:
    """``xmask predict SOURCE --out OUT --backend B --mask-grid G [EXTRA]`` in a child: (wall
    seconds, its peak RSS in MiB)."""
    command = [sys.executable, "-c", PREDICT, "predict", str(source), "--out", str(out), *extra]
    command += ["--backend", setup.backend, "--mask-grid", setup.grid]
    model = [] if setup.model == "default" else ["--model", setup.model]
    wall, stdout = _child(command + model)
    peak = next(line for line in stdout.splitlines() if line.startswith("PEAK_RSS_MB"))
    return wall, float(peak.split()[1])


def _images(source: Path | None, work: Path, count: int) -> list[Path]:
    """``count`` 1024×768 images: the first of ``source`` or synthetic ones written to work."""
    if source is not None:
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in (".jpg", ".png"))
        if len(files) >= count:
            return files[:count]
    from PIL import Image

    from xmask.data.synthetic import make_crowd

    folder = work / "synthetic"
    folder.mkdir(exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"crowd_{i:02d}.png"
        Image.fromarray(make_crowd(768, 1024, 150, seed=i).image).save(path)
        paths.append(path)
    return paths


def _folder(images: list[Path], folder: Path) -> Path:
    """``images`` copied into ``folder``."""
    folder.mkdir(exist_ok=True)
    for path in images:
        target = folder / path.name
        if not target.exists():
            shutil.copyfile(path, target)
    return folder


def _video(images: list[Path], path: Path) -> Path:
    """``images`` (of one size) as the frames of an H.264 video at 5 frames/s."""
    import av
    import numpy as np
    from PIL import Image

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=5)
        stream.width, stream.height = Image.open(images[0]).size
        stream.pix_fmt = "yuv420p"
        for image in images:
            frame = np.asarray(Image.open(image).convert("RGB"))
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def _compare(
    setup: Setup, folder: Path, work: Path, rounds: int, frames: int
) -> dict[str, list[dict]]:
    """The ``--compare`` runs (module docstring), alternating."""
    video = _video(sorted(folder.iterdir())[:frames], work / "compare.mp4")
    runs: dict[str, list[dict]] = {"images": [], "video": []}
    for turn in range(rounds):
        for mode in ("--no-pipeline", "--pipeline"):
            for threads in ("2", "1"):
                os.environ["OMP_NUM_THREADS"] = threads
                out = work / f"compare-{turn}{mode}-{threads}"
                run = {"mode": mode.strip("-"), "torch_threads": int(threads)}
                load = os.getloadavg()[0]
                wall, _ = _predict(setup, folder, out, mode, "--force")
                summary = json.loads((out / "summary.json").read_text())
                per_image = round(summary["seconds"] / summary["predicted"], 3)
                runs["images"].append(run | {"per_image_s": per_image, "wall_s": round(wall, 1)})
                runs["images"][-1]["load_before"] = round(load, 2)
                load = os.getloadavg()[0]
                pipelined = str(int(mode == "--pipeline"))
                _, stdout = _child(
                    [
                        sys.executable,
                        "-c",
                        VIDEO,
                        setup.model,
                        str(video),
                        f"{out}-video",
                        pipelined,
                        setup.backend,
                        setup.grid,
                    ]
                )
                timed = json.loads(stdout.strip().splitlines()[-1])
                fps = round(timed["frames"] / timed["seconds"], 2)
                runs["video"].append(run | {"frames_per_s": fps, "load_before": round(load, 2)})
                print(json.dumps([runs["images"][-1], runs["video"][-1]]), file=sys.stderr)
    os.environ.pop("OMP_NUM_THREADS")
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="default", help="model name or path (default: shipped)")
    parser.add_argument("--images", type=Path, help="folder of 1024×768 images (≥ 50)")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--huge-heads", type=int, default=5000)
    parser.add_argument("--compare", type=int, metavar="N", help="only pipelined vs not")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of --compare")
    parser.add_argument("--video-frames", type=int, default=12, help="frames of --compare's video")
    parser.add_argument("--backend", default="torch", choices=("torch", "onnx", "onnx-int8"))
    parser.add_argument("--mask-grid", default="1", choices=("1", "2", "4"), help="--mask-grid")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="xmask-predict-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"model": args.model, "backend": args.backend, "cpus": os.cpu_count()}
    result["mask_grid"] = int(args.mask_grid)
    setup = Setup(args.model, args.backend, args.mask_grid)
    if args.compare:
        folder = _folder(_images(args.images, work, args.compare), work / "compare")
        result["compare"] = _compare(setup, folder, work, args.rounds, args.video_frames)
        print(json.dumps(result, indent=2))
        return

    images = _images(args.images, work, 50)
    wall_one, rss_one = _predict(setup, images[0], work / "one")
    result["one_image"] = {"image": str(images[0]), "wall_s": wall_one, "peak_rss_mb": rss_one}

    folder = _folder(images, work / "fifty")
    wall_fifty, rss_fifty = _predict(setup, folder, work / "fifty-out")
    summary = json.loads((work / "fifty-out" / "summary.json").read_text())
    result["fifty_images"] = {
        "wall_s": wall_fifty,
        "per_image_s_from_summary": summary["seconds"] / summary["images"],
        "per_image_s_after_startup": (wall_fifty - wall_one) / 49,
        "heads": summary["heads"],
        "peak_rss_mb": rss_fifty,
    }

    from PIL import Image

    from xmask.data.points_io import write_points_txt
    from xmask.data.synthetic import make_crowd

    crowd = make_crowd(4000, 6000, args.huge_heads, seed=0)
    Image.fromarray(crowd.image).save(work / "huge.png")
    write_points_txt(work / "huge.txt", crowd.points)
    del crowd
    wall_huge, rss_huge = _predict(setup, work / "huge.png", work / "huge-out")
    record = json.loads((work / "huge-out" / "predictions" / "huge.json").read_text())
    result["huge_predict"] = {
        "size": "6000x4000",
        "wall_s": wall_huge,
        "predicted_heads": record["count"],
        "peak_rss_mb": rss_huge,
    }
    script = [sys.executable, "-c", SEGMENT_GIVEN, args.model, str(work / "huge.png")]
    _, out = _child([*script, str(work / "huge.txt")])
    result["huge_given_heads"] = json.loads(out.strip().splitlines()[-1])
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
