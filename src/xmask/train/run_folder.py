"""A training run's whole config and its network, for the training code (stages that start from
an earlier run, the pipeline, resuming). Inference reads runs through
:mod:`xmask.inference.run_folder`, which needs only part of the config."""

from __future__ import annotations

from pathlib import Path

import torch

from xmask.inference.run_folder import RunFolder, find_run_folder, load_run_model
from xmask.train.config import TrainConfig, config_from_yaml_text


def load_run_config(run: RunFolder | str | Path) -> TrainConfig:
    """The saved config of a run (a :class:`RunFolder`, or any path inside the run).

    Raises:
        CheckpointError: no ``config.yaml``.
        ConfigError: it does not fit the schema.
    """
    folder = run if isinstance(run, RunFolder) else find_run_folder(run)
    return config_from_yaml_text(folder.config_text(), folder.config_path)


def load_trained_model(
    path: str | Path, device: torch.device | str = "cpu", which: str = "teacher"
) -> tuple[torch.nn.Module, TrainConfig]:
    """The ``which`` network of a run (:func:`~xmask.inference.run_folder.load_run_model`) and
    the run's whole config."""
    model, _ = load_run_model(path, device, which)
    return model, load_run_config(Path(path).expanduser())
