"""A training run folder as inference sees it: its files, what it was trained on, its network.

A run folder ``RUN/`` (written by :mod:`xmask.train`) holds ``config.yaml`` (the resolved
training config), ``train.log``, ``metrics.jsonl``, ``checkpoints/`` and, with a validation
list, ``best/`` (:mod:`xmask.inference.checkpoint`). Inference reads only the parts of
``config.yaml`` it needs (:class:`RunInfo`: the architecture and the training data), so it never
imports the training code; :func:`xmask.train.config.load_run_config` reads the whole config.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from xmask.inference.checkpoint import CheckpointError, load_checkpoint, load_tensors
from xmask.models.model import ModelConfig, build_model


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

    def config_text(self) -> str:
        """The text of ``config.yaml``.

        Raises:
            CheckpointError: no ``config.yaml``.
        """
        if not self.config_path.is_file():
            raise CheckpointError(self.config_path, "not found: not an xmask run folder")
        return self.config_path.read_text(encoding="utf-8")


@dataclass(frozen=True)
class RunData:
    """What a run was trained on (``config.yaml``'s ``data``).

    Attributes:
        dataset: reader key (``sha``, ``shb``, ``ucf``, ``jhu``, ``folder``).
        root: the dataset folder on the training machine.
        labeled: the labeled list (a split name, a list file, or ``all``).
        unlabeled_pool: ``all``, ``rest`` or ``none``.
        max_short_side: the readers' resize rule, or None.
        validation: the held-out list that selected the best teacher, or None.
    """

    dataset: str
    root: str
    labeled: str
    unlabeled_pool: str = "all"
    max_short_side: int | None = None
    validation: str | None = None


@dataclass(frozen=True)
class RunInfo:
    """The parts of a run's ``config.yaml`` that inference needs.

    Attributes:
        name: the run's name.
        stage: 1, 2 or 3.
        model: the architecture (built without backbone weights: they are in the checkpoint).
        data: the training data.
    """

    name: str
    stage: int
    model: ModelConfig
    data: RunData


def _section(node: DictConfig, key: str, schema: type, path: Path) -> Any:
    """``node[key]`` as the dataclass ``schema`` (only its fields; unknown keys are the
    training code's)."""
    content = node.get(key)
    if not isinstance(content, DictConfig):
        raise CheckpointError(path, f"no '{key}' section")
    values = OmegaConf.to_container(content, resolve=True)
    assert isinstance(values, dict)
    known = {f.name for f in fields(schema)}
    return schema(**{k: v for k, v in values.items() if k in known})


def read_run_info(run: RunFolder) -> RunInfo:
    """The architecture and training data of a run (:class:`RunInfo`).

    Raises:
        CheckpointError: no or unreadable ``config.yaml``, or a section missing or malformed.
    """
    path = run.config_path
    try:
        node = OmegaConf.create(run.config_text())
        if not isinstance(node, DictConfig):
            raise CheckpointError(path, "not a mapping of keys")
        model = _section(node, "model", ModelConfig, path)
        data = _section(node, "data", RunData, path)
        return RunInfo(str(node.get("name", run.root.name)), int(node.get("stage", 1)), model, data)
    except (OmegaConfBaseException, TypeError, ValueError) as err:
        raise CheckpointError(path, f"invalid configuration ({err})") from err


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


def _run_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the weights a run path stands for (:func:`weights_folder`)."""
    return load_tensors(path) if path.is_file() else load_checkpoint(weights_folder(path)).tensors


def run_networks(path: str | Path) -> tuple[str, ...]:
    """The networks (``"teacher"``, ``"student"``, in that order) whose weights a run folder,
    its ``checkpoints/`` or ``best/`` folder, or a weights file holds (``best/`` keeps the
    teacher only).

    Raises:
        CheckpointError: missing, incomplete or corrupt files.
    """
    keys = _run_tensors(Path(path).expanduser()).keys()
    return tuple(n for n in ("teacher", "student") if any(k.startswith(n + ".") for k in keys))


def load_run_model(
    path: str | Path, device: torch.device | str = "cpu", which: str = "teacher"
) -> tuple[torch.nn.Module, RunInfo]:
    """A trained network from a run folder, its ``checkpoints/`` or ``best/`` folder, or a
    ``.safetensors`` file inside a run, in eval mode on ``device``, and the run's
    :class:`RunInfo`.

    Args:
        which: ``"teacher"`` (the EMA teacher, the model we select by default) or ``"student"``.

    Raises:
        CheckpointError: missing, incomplete, corrupt or foreign files.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(path, "not found")
    if path.is_file() and path.suffix != ".safetensors":
        raise CheckpointError(path, "expected a run folder or a .safetensors checkpoint")
    info = read_run_info(find_run_folder(path))
    tensors = _run_tensors(path)
    prefix = which + "."
    state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    if not state:
        raise CheckpointError(path, f"holds no '{which}' weights")
    model = build_model(replace(info.model, weights=None))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            path,
            f"weights do not match the model in config.yaml "
            f"({len(missing)} missing, {len(unexpected)} unexpected keys, e.g. "
            f"{(missing or unexpected)[:3]})",
        )
    return model.to(device).eval(), info
