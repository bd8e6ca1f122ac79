"""Nothing half-written stays behind (issue 27, item 7): temporary files of a killed process are
removed by the next job in that folder, ``metrics.jsonl`` survives a torn last line, a damaged
latest checkpoint falls back to the previous intact one, and checkpoints are fsync-ed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import make_run
from xmask.cli import EXIT_OK, main
from xmask.data.files import append_jsonl, read_jsonl, remove_stale_temporaries
from xmask.data.image_io import atomic_write_bytes
from xmask.data.synthetic import make_crowd_folder
from xmask.inference.checkpoint import Checkpoint, load_checkpoint, save_checkpoint


def _dead_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)  # fmt: skip
    return int(child.stdout)


def _leftovers(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    old = time.time() - 3600
    paths = {
        "dead": folder / f".IMG_1.json.{_dead_pid()}.{'a' * 32}.tmp",
        "legacy": folder / f".step-00000002.safetensors.{'b' * 32}.tmp",
        "alive": folder / f".IMG_2.json.{os.getpid()}.{'c' * 32}.tmp",
        "user": folder / ".my-notes.tmp",
    }
    for path in paths.values():
        path.write_bytes(b"x" * 100)
        os.utime(path, (old, old))
    return paths


def test_atomic_writes_leave_nothing_and_stale_temporaries_go(tmp_path: Path) -> None:
    atomic_write_bytes(tmp_path / "a" / "file.bin", b"data")
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["file.bin"]
    paths = _leftovers(tmp_path / "deep" / "er")
    assert remove_stale_temporaries(tmp_path) == 2
    assert {k for k, p in paths.items() if p.exists()} == {"alive", "user"}


def test_predict_removes_a_killed_run_s_temporaries(tmp_path: Path) -> None:
    make_crowd_folder(tmp_path / "images", 1, height=40, width=50, n_heads=(3, 4), masks=False)
    make_run(tmp_path)
    out = tmp_path / "out"
    paths = _leftovers(out / "predictions")
    args = [str(tmp_path / "images"), "--out", str(out), "--model", str(tmp_path / "run")]
    assert main(["predict", *args, "--device", "cpu"]) == EXIT_OK
    assert not paths["dead"].exists() and not paths["legacy"].exists()


def test_torn_metrics_line_is_dropped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "metrics.jsonl"
    for step in (1, 2, 3):
        append_jsonl(path, {"step": step, "loss": 0.5})
    with path.open("ab") as handle:
        handle.write(b'{"step": 4, "lo')  # a kill in the middle of a line
    assert [r["step"] for r in read_jsonl(path)] == [1, 2, 3]
    assert "metrics.jsonl" in caplog.text
    append_jsonl(path, {"step": 4})
    assert [r["step"] for r in read_jsonl(path)] == [1, 2, 3, 4]


def _ckpt(step: int) -> Checkpoint:
    return Checkpoint({"student.w": torch.full((3,), float(step))}, {"step": step, "epoch": 0})


@pytest.mark.parametrize("damage", ["weights", "state", "pointer"])
def test_damaged_latest_checkpoint_falls_back(tmp_path: Path, damage: str) -> None:
    save_checkpoint(tmp_path, _ckpt(1))
    latest = save_checkpoint(tmp_path, _ckpt(2))
    target = {"weights": latest, "state": latest.with_suffix(".json"),
              "pointer": tmp_path / "latest.json"}[damage]  # fmt: skip
    target.write_bytes(target.read_bytes()[: len(target.read_bytes()) // 2])
    loaded = load_checkpoint(tmp_path)
    expected = 2.0 if damage == "pointer" else 1.0
    assert loaded.state["step"] == expected
    torch.testing.assert_close(loaded.part("student")["w"], torch.full((3,), expected))


def test_checkpoints_are_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(fd) or real(fd))
    save_checkpoint(tmp_path, _ckpt(1))
    assert len(calls) >= 3  # weights, state and pointer (their folder too)
    json.loads((tmp_path / "latest.json").read_text())
