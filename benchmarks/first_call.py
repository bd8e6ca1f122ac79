"""Seconds of a fresh install's first ``xmask predict`` (empty numba cache) and of the next one.

    python benchmarks/first_call.py [--image IMAGE] [--src SRC] [--repeats N]

Each step runs in a fresh subprocess of this interpreter: ``import xmask``; ``import xmask``
and the :class:`~xmask.Predictor` it loads on first use; then ``xmask predict IMAGE`` with
``NUMBA_CACHE_DIR`` set to a new, empty folder (the first call after an install), and again
with the same folder (the second call). For each call: the wall-clock seconds of the whole
process (start, imports, model, network, post-processing, outputs, exit) and the
``network_s`` and ``post_s`` of its ``summary.json``. ``--src`` puts a source tree first on
``PYTHONPATH`` (e.g. another checkout's ``src``), to compare two versions on one machine;
``--repeats`` runs the whole sequence that many times (a fresh cache each time).

Prints one table row per step and repeat, with the load average (``os.getloadavg``) before
each: on a shared machine, figures are only comparable to those taken beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_IMAGE = (
    Path(__file__).resolve().parents[1]
    / "../shared/data/shanghaitech/part_B/test_data/images/IMG_1.jpg"
)
IMPORTS = {
    "import xmask": "import xmask",
    "import xmask.Predictor": "import xmask; xmask.Predictor",
}


def _run(command: list[str], env: dict[str, str]) -> float:
    """Wall-clock seconds of one subprocess (its output dropped; raises if it fails)."""
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr}")
    return seconds


def _load() -> str:
    """The 1, 5 and 15-minute load averages."""
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def measure(image: Path, env: dict[str, str]) -> list[dict]:
    """One sequence: the imports, then a first and a second ``xmask predict`` on one fresh
    numba cache; a row per step (``step``, ``load`` before it, ``wall_s``, and for the calls
    ``network_s`` and ``post_s``)."""
    rows = []
    for step, code in IMPORTS.items():
        load = os.getloadavg()[0]
        rows.append({"step": step, "load": load, "wall_s": _run([sys.executable, "-c", code], env)})
    with tempfile.TemporaryDirectory(prefix="xmask-first-call-") as folder:
        run_env = env | {"NUMBA_CACHE_DIR": str(Path(folder) / "numba")}
        for step in ("first predict", "second predict"):
            out = Path(folder) / step.replace(" ", "-")
            load = os.getloadavg()[0]
            command = [sys.executable, "-m", "xmask", "predict", str(image), "--out", str(out)]
            wall = _run(command, run_env)
            summary = json.loads((out / "summary.json").read_text())
            times = {key: summary[key] for key in ("network_s", "post_s")}
            rows.append({"step": step, "load": load, "wall_s": wall} | times)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE, help="the image predicted")
    parser.add_argument("--src", type=Path, help="a source tree put first on PYTHONPATH")
    parser.add_argument("--repeats", type=int, default=1, help="sequences run (fresh caches)")
    args = parser.parse_args()
    env = dict(os.environ)
    if args.src is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(args.src.resolve()), env.get("PYTHONPATH")) if p
        )
    source = args.src or "the importable xmask"
    print(f"source: {source}; image: {args.image}; load average: {_load()}")
    print(f"{'step':<24}{'load':>6}{'wall_s':>9}{'network_s':>11}{'post_s':>9}")
    for _ in range(args.repeats):
        for row in measure(args.image, env):
            network, post = row.get("network_s"), row.get("post_s")
            extra = "" if network is None else f"{network:>11.2f}{post:>9.2f}"
            print(f"{row['step']:<24}{row['load']:>6.2f}{row['wall_s']:>9.2f}{extra}")
    print(f"load average after: {_load()}")


if __name__ == "__main__":
    main()
