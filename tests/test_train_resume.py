"""Training end to end on tiny synthetic crowds: a real SIGKILL, then --resume, ends with the
same weights as an uninterrupted run; the run folder holds config, log, metrics, checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import tiny_crowd, tiny_train_overrides
from xmask.inference.checkpoint import load_checkpoint

STEPS = 9


def _overrides(root: Path, name: str) -> list[str]:
    return [
        *tiny_train_overrides(root, name),
        "schedule.epochs=3",
        "schedule.steps_per_epoch=3",
        "schedule.checkpoint_minutes=0",
    ]


def _command(root: Path, name: str, resume: bool = False) -> list[str]:
    cmd = [sys.executable, "-m", "xmask", "train", *_overrides(root, name)]
    return [*cmd, "--resume"] if resume else cmd


@pytest.fixture(scope="module")
def crowd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_crowd(tmp_path_factory.mktemp("crowd"), images=5, labeled=2)


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _latest_step(run: Path) -> int:
    try:
        return int(json.loads((run / "checkpoints" / "latest.json").read_text())["step"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return -1


def test_sigkill_then_resume_matches_uninterrupted_run(crowd: Path) -> None:
    subprocess.run(_command(crowd, "straight"), check=True, env=_env(), capture_output=True)
    victim = subprocess.Popen(
        _command(crowd, "killed"), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    run = crowd / "runs" / "killed"
    deadline = time.monotonic() + 300
    while _latest_step(run) < 4 and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert victim.poll() is None, "the run ended before it could be killed"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed_at = _latest_step(run)
    assert 4 <= killed_at < STEPS
    again = subprocess.run(_command(crowd, "killed"), env=_env(), capture_output=True, text=True)
    assert again.returncode == 1 and "--resume" in again.stderr
    subprocess.run(
        _command(crowd, "killed", resume=True), check=True, env=_env(), capture_output=True
    )
    straight = load_checkpoint(crowd / "runs" / "straight" / "checkpoints")
    resumed = load_checkpoint(run / "checkpoints")
    assert straight.state["step"] == resumed.state["step"] == STEPS
    for key, value in straight.tensors.items():
        torch.testing.assert_close(resumed.tensors[key], value, rtol=1e-5, atol=1e-6, msg=key)
    epochs = [
        json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()
    ]
    assert epochs == [1, 2, 3]
    assert (run / "config.yaml").is_file() and "resumed" in (run / "train.log").read_text()
