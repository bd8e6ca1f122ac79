"""Multi-process training through torchrun: 2 CPU ranks (gloo) on synthetic crowds end with
identical student and teacher weights (checked by the trainer across ranks), and the
checkpoint written by rank 0 resumes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import tiny_crowd, tiny_train_overrides


@pytest.fixture(scope="module")
def crowd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_crowd(tmp_path_factory.mktemp("ddp"), images=6, labeled=3)


def _torchrun(root: Path, epochs: int, resume: bool = False) -> subprocess.CompletedProcess:
    overrides = [*tiny_train_overrides(root, "ddp"), "device=cpu", f"schedule.epochs={epochs}"]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "xmask",
        "train",
        *overrides,
        *(["--resume"] if resume else []),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def test_two_cpu_ranks_end_identical(crowd: Path) -> None:
    first = _torchrun(crowd, epochs=3)
    assert first.returncode == 0, first.stderr[-3000:]
    log = (crowd / "runs" / "ddp" / "train.log").read_text()
    assert "6 unlabeled" in log and "2 steps per epoch" in log  # 6 images / (2 per rank × 2)
    assert "student and teacher weights identical on all 2 ranks" in log
    again = _torchrun(crowd, epochs=4, resume=True)
    assert again.returncode == 0, again.stderr[-3000:]
    log = (crowd / "runs" / "ddp" / "train.log").read_text()
    assert "resumed" in log and log.count("identical on all 2 ranks") == 2
