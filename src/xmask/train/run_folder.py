"""A run folder on disk: its files, its config, and the trained model inside it."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from xmask.train.checkpoint import CheckpointError, load_checkpoint, load_tensors
from xmask.train.config import TrainConfig, config_from_yaml_text


@dataclass(frozen=True)
class RunFolder:
    """Paths of one training run (``RUN/``)."""

    root: Path

    @property
    def config_path(self) -> Path:
        """``RUN/config.yaml``: the resolved config."""
        return self.root / "config.yaml"

    @property
    def log_path(self) -> Path:
        """``RUN/train.log``."""
        return self.root / "train.log"

    @property
    def metrics_path(self) -> Path:
        """``RUN/metrics.jsonl``: one JSON object per epoch or evaluation."""
        return self.root / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        """``RUN/checkpoints/``."""
        return self.root / "checkpoints"

    @property
    def best(self) -> Path:
        """``RUN/best/``: the checkpoint with the best validation score, if validated."""
        return self.root / "best"

    def has_checkpoint(self) -> bool:
        """A resumable checkpoint exists."""
        return (self.checkpoints / "latest.json").is_file()

    def has_best(self) -> bool:
        """A validation-selected checkpoint exists."""
        return (self.best / "latest.json").is_file()

    def load_config(self) -> TrainConfig:
        """The run's saved config."""
        if not self.config_path.is_file():
            raise CheckpointError(self.config_path, "not found: not an xmask run folder")
        return config_from_yaml_text(self.config_path.read_text(encoding="utf-8"), self.config_path)


def find_run_folder(path: str | Path) -> RunFolder:
    """The run a path belongs to: the nearest of ``path`` and its parents holding
    ``config.yaml`` (a run folder, its ``checkpoints/`` or ``best/``, or a weights file).

    Raises:
        CheckpointError: no such folder.
    """
    path = Path(path)
    for folder in (path, *path.parents):
        if (folder / "config.yaml").is_file():
            return RunFolder(folder)
    raise CheckpointError(path, "not inside an xmask run folder (no config.yaml found)")


def weights_folder(path: Path) -> Path:
    """The checkpoint folder a run folder, its ``checkpoints/`` or ``best/`` folder, or a
    weights file (its parent) stands for."""
    if path.is_file():
        return path.parent
    return path if (path / "latest.json").is_file() else find_run_folder(path).checkpoints


def load_trained_model(
    path: str | Path, device: torch.device | str = "cpu", which: str = "teacher"
) -> tuple[torch.nn.Module, TrainConfig]:
    """A trained network from a run folder, its ``checkpoints/`` or ``best/`` folder, or a
    ``.safetensors`` file inside a run, in eval mode on ``device``.

    Args:
        which: ``"teacher"`` (the EMA teacher, the model we select by default) or ``"student"``.

    Raises:
        CheckpointError: missing, incomplete, corrupt or foreign files.
    """
    from xmask.models.model import build_model

    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(path, "not found")
    if path.is_file() and path.suffix != ".safetensors":
        raise CheckpointError(path, "expected a run folder or a .safetensors checkpoint")
    run = find_run_folder(path)
    cfg = run.load_config()
    tensors = (
        load_tensors(path) if path.is_file() else load_checkpoint(weights_folder(path)).tensors
    )
    prefix = which + "."
    state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    if not state:
        raise CheckpointError(path, f"holds no '{which}' weights")
    model = build_model(replace(cfg.model, weights=None))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            path,
            f"weights do not match the model in config.yaml "
            f"({len(missing)} missing, {len(unexpected)} unexpected keys, e.g. "
            f"{(missing or unexpected)[:3]})",
        )
    return model.to(device).eval(), cfg
