"""Checkpoints: safetensors weights plus a small JSON of step and optimizer state, atomic.

A run folder ``RUN/`` holds ``config.yaml`` (the resolved config), ``train.log``,
``metrics.jsonl`` and ``checkpoints/``:

- ``step-NNNNNNNN.safetensors``: tensors under the prefixes ``student.``, ``teacher.`` and
  ``optim.`` (Adam moments, one entry per parameter index and state key);
- ``step-NNNNNNNN.json``: epoch, step, optimizer hyper-parameters, the run's own counters;
- ``latest.json``: ``{"step": N}``, replaced last, so a kill at any moment leaves the previous
  complete pair as the one to resume from. Older pairs beyond ``keep`` are deleted afterwards.

Every file is written atomically and fsync-ed (with its folder). Should the newest pair still be
unreadable (a damaged disk, a copy cut short) or ``latest.json`` damaged, loading falls back to
the newest intact pair, with a warning.

Loading never unpickles anything: tensors come from safetensors, state from JSON.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from xmask.data.files import atomic_write_bytes, remove_stale_temporaries
from xmask.errors import XmaskError

log = logging.getLogger(__name__)


FORMAT = "xmask-checkpoint-1"


class CheckpointError(XmaskError):
    """A run folder or checkpoint file is missing, incomplete, corrupt or not xmask's."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        super().__init__(f"{path}: {problem}")


@dataclass
class Checkpoint:
    """What a checkpoint holds.

    Attributes:
        tensors: every tensor, keys prefixed ``student.``, ``teacher.``, ``optim.``.
        state: the JSON part (``step``, ``epoch``, ``optimizer`` hyper-parameters, ...).
    """

    tensors: dict[str, torch.Tensor]
    state: dict[str, Any]

    def part(self, prefix: str) -> dict[str, torch.Tensor]:
        """Tensors under ``prefix.``, with the prefix removed."""
        start = len(prefix) + 1
        return {k[start:]: v for k, v in self.tensors.items() if k.startswith(prefix + ".")}


def _atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write_bytes(path, save(contiguous, metadata={"format": FORMAT}), durable=True)


def write_json(path: Path, content: dict[str, Any]) -> None:
    """Atomically and durably (fsync) write ``content`` as indented JSON."""
    atomic_write_bytes(path, (json.dumps(content, indent=2) + "\n").encode("utf-8"), durable=True)


def save_checkpoint(folder: str | Path, ckpt: Checkpoint, keep: int = 2) -> Path:
    """Write ``step-N.safetensors`` and ``step-N.json``, then point ``latest.json`` at them.

    Returns:
        The safetensors path.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(folder)
    step = int(ckpt.state["step"])
    stem = f"step-{step:08d}"
    _atomic_save_tensors(folder / f"{stem}.safetensors", ckpt.tensors)
    write_json(folder / f"{stem}.json", {"format": FORMAT, **ckpt.state})
    write_json(folder / "latest.json", {"format": FORMAT, "step": step})
    for old in sorted(folder.glob("step-*.safetensors"))[:-keep]:
        old.unlink(missing_ok=True)
        old.with_suffix(".json").unlink(missing_ok=True)
    return folder / f"{stem}.safetensors"


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(path, "file not found")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(path, f"corrupt JSON ({err})") from err
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise CheckpointError(path, f"not an xmask checkpoint (expected format {FORMAT})")
    return content


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file; anything else (a pickle, a truncated file) is refused."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "file not found")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(
            path, f"not a readable safetensors file ({err}); pickled checkpoints are refused"
        ) from err


def latest_step(folder: str | Path) -> int:
    """The step ``folder/latest.json`` points at."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(folder, "checkpoint folder not found")
    return int(_read_json(folder / "latest.json")["step"])


def checkpoint_state(folder: str | Path) -> dict[str, Any]:
    """The state (counters) of the checkpoint ``latest.json`` of ``folder`` points at, without
    reading its tensors."""
    folder = Path(folder)
    return _read_json(folder / f"step-{latest_step(folder):08d}.json")


def _load_pair(folder: Path, step: int) -> Checkpoint:
    stem = f"step-{step:08d}"
    state = _read_json(folder / f"{stem}.json")
    return Checkpoint(tensors=load_tensors(folder / f"{stem}.safetensors"), state=state)


def load_checkpoint(folder: str | Path) -> Checkpoint:
    """The checkpoint ``latest.json`` of ``folder`` points at; if it (or ``latest.json``) is
    damaged, the newest intact one, with a warning.

    Raises:
        CheckpointError: no folder, or no intact checkpoint in it (the first problem found).
    """
    folder = Path(folder)
    try:
        return _load_pair(folder, latest_step(folder))
    except CheckpointError as err:
        if not folder.is_dir():
            raise
        problem = err
    steps = sorted(
        (int(p.stem[5:]) for p in folder.glob("step-*.json") if p.stem[5:].isdigit()),
        reverse=True,
    )
    for step in steps:
        try:
            ckpt = _load_pair(folder, step)
        except CheckpointError:
            continue
        log.warning("%s; resuming from the previous intact checkpoint, step %d", problem, step)
        return ckpt
    raise problem
