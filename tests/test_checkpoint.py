"""Checkpoints: atomic pairs, latest pointer, pruning, refusal of pickles and corrupt files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from xmask.inference.checkpoint import (
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    load_tensors,
    save_checkpoint,
)
from xmask.train.stages.base import optimizer_from_tensors, optimizer_tensors


def _ckpt(step: int) -> Checkpoint:
    tensors = {"student.w": torch.full((2, 3), float(step)), "teacher.w": torch.zeros(2)}
    return Checkpoint(tensors=tensors, state={"step": step, "epoch": step // 10})


def test_round_trip_latest_and_pruning(tmp_path: Path) -> None:
    for step in (5, 10, 15):
        save_checkpoint(tmp_path, _ckpt(step), keep=2)
    loaded = load_checkpoint(tmp_path)
    assert loaded.state["step"] == 15 and loaded.state["epoch"] == 1
    torch.testing.assert_close(loaded.part("student")["w"], torch.full((2, 3), 15.0))
    assert sorted(p.name for p in tmp_path.glob("step-*")) == [
        "step-00000010.json",
        "step-00000010.safetensors",
        "step-00000015.json",
        "step-00000015.safetensors",
    ]
    assert not list(tmp_path.glob(".*tmp"))


def test_pickle_is_refused(tmp_path: Path) -> None:
    torch.save({"w": torch.zeros(2)}, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="pickled checkpoints are refused"):
        load_tensors(tmp_path / "model.safetensors")


@pytest.mark.parametrize(
    ("content", "problem"),
    [("{not json", "corrupt JSON"), ('{"step": 3}', "not an xmask checkpoint")],
)
def test_corrupt_or_foreign_pointer(
    tmp_path: Path, content: str, problem: str, caplog: pytest.LogCaptureFixture
) -> None:
    save_checkpoint(tmp_path, _ckpt(1))
    (tmp_path / "latest.json").write_text(content)
    assert load_checkpoint(tmp_path).state["step"] == 1  # the newest intact pair
    assert problem in caplog.text
    (tmp_path / "step-00000001.json").write_text(content)
    with pytest.raises(CheckpointError, match=problem):
        load_checkpoint(tmp_path)


def test_truncated_weights_and_missing_folder(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path, _ckpt(2))
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="checkpoint folder not found"):
        load_checkpoint(tmp_path / "nope")


def test_optimizer_state_round_trip() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 4)).square().sum().backward()
        opt.step()
    fresh = torch.optim.Adam(model.parameters(), lr=0.1)
    saved = Checkpoint(tensors=optimizer_tensors(opt), state={"step": 3})
    optimizer_from_tensors(fresh, saved.part("optim"))
    for index, state in opt.state_dict()["state"].items():
        for key, value in state.items():
            torch.testing.assert_close(fresh.state_dict()["state"][index][key], value)
