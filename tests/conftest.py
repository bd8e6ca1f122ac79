"""Shared fixtures: where the real data lie (skip cleanly where absent)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

if TYPE_CHECKING:
    from xmask.models import XMaskModel

REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    """``$XMASK_DATA`` or ``../shared/data`` beside the repository."""
    return Path(os.environ.get("XMASK_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shanghaitech() -> Path:
    """The ShanghaiTech folder (holding ``part_A`` and ``part_B``), or skip."""
    root = data_root() / "shanghaitech"
    if not (root / "part_A").is_dir() or not (root / "part_B").is_dir():
        pytest.skip(f"ShanghaiTech data not found under {root} (set XMASK_DATA)")
    return root


@pytest.fixture(params=["compiled", "numpy"])
def kernel_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test once with the compiled loops of :mod:`xmask.geometry.kernels` and once
    with the NumPy twins the callers run while those compile."""
    from xmask.geometry import kernels

    pending = set() if request.param == "compiled" else set(kernels._compile_calls())
    monkeypatch.setattr(kernels, "_pending", pending)
    return request.param


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> Iterator[None]:
    """Tests use small tensors: intra-op threads only add overhead on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_crowd(root: Path, images: int, labeled: int, size: tuple[int, int] = (80, 96)) -> Path:
    """Synthetic crowds in the folder format with ``labeled.txt`` naming the first ``labeled``."""
    from xmask.data.synthetic import make_crowd_folder

    make_crowd_folder(root, images, height=size[0], width=size[1], n_heads=(4, 15), masks=False)
    names = "".join(f"syn_{i:04d}.png\n" for i in range(labeled))
    (root / "labeled.txt").write_text(names)
    return root


TINY = {"weights": None, "neck_channels": 32, "head_channels": 32, "mask_channels": 16}
"""A small architecture for inference tests."""


def tiny_model(mask_head: bool = True) -> XMaskModel:
    """A small randomly initialised model (seeded)."""
    from xmask.models import ModelConfig, build_model

    torch.manual_seed(0)
    return build_model(ModelConfig(**TINY, mask_head=mask_head)).eval()


def make_run(
    root: Path, mask_head: bool = True, threshold: float | None = None, crowd: Path | None = None
) -> Path:
    """A run folder holding :func:`tiny_model`'s teacher weights (step 1), optionally
    calibrated, trained (says its config) on ``crowd`` (a :func:`tiny_crowd`) or on a dataset
    that is not there."""
    from xmask.inference.calibration import CountCalibration, write_calibration
    from xmask.inference.checkpoint import Checkpoint, save_checkpoint
    from xmask.models import ModelConfig
    from xmask.train.config import DataConfig, TrainConfig, to_yaml

    run = root / ("run" if mask_head else "run-stage1")
    run.mkdir(parents=True)
    data = DataConfig(root=str(root / "no-data"))
    if crowd is not None:
        data = DataConfig(dataset="folder", root=str(crowd), labeled=str(crowd / "labeled.txt"))
    config = TrainConfig(model=ModelConfig(**TINY, mask_head=mask_head), data=data)
    (run / "config.yaml").write_text(to_yaml(config))
    tensors = {f"teacher.{k}": v for k, v in tiny_model(mask_head).state_dict().items()}
    save_checkpoint(run / "checkpoints", Checkpoint(tensors, {"step": 1, "epoch": 1}))
    if threshold is not None:
        calibration = CountCalibration(threshold, 1.0, 2.0, 3, step=1, which="teacher")
        write_calibration(run / "checkpoints", calibration)
    return run


def tiny_train_overrides(root: Path, name: str) -> list[str]:
    """Overrides that train a tiny randomly initialised model on :func:`tiny_crowd` in seconds:
    2 + 2 crops of 64 px per step, one labeled-only epoch, then Mean Teacher."""
    return [
        "data.dataset=folder",
        f"data.root={root}",
        f"data.labeled={root / 'labeled.txt'}",
        "model.weights=null",
        "model.neck_channels=16",
        "model.head_channels=16",
        "augment.crop_size=64",
        "schedule.batch_labeled=2",
        "schedule.batch_unlabeled=2",
        "teacher.warmup_epochs=1",
        "teacher.ramp=0.5",
        "threads=1",
        f"out={root / 'runs'}",
        f"name={name}",
    ]


def write_shanghaitech_gt(path: Path, points: object) -> None:
    """A ShanghaiTech ground-truth ``.mat`` (``image_info[0,0][0,0][0]`` = the points)."""
    import numpy as np
    from scipy.io import savemat

    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    info = np.empty((1, 1), dtype=object)
    inner = np.empty((1, 1), dtype=[("location", "O"), ("number", "O")])
    inner[0, 0] = (points, np.array([[len(points)]]))
    info[0, 0] = inner
    savemat(path, {"image_info": info})


def fake_shanghaitech(root: Path, part: str, split: str, heads: dict[str, int]) -> Path:
    """``root/part_{part}/{split}_data`` with one synthetic crowd per ``{stem: heads}``."""
    from PIL import Image

    from xmask.data.synthetic import make_crowd

    folder = root / f"part_{part}" / f"{split}_data"
    (folder / "images").mkdir(parents=True)
    (folder / "ground-truth").mkdir()
    for seed, (stem, count) in enumerate(heads.items()):
        sample = make_crowd(64, 80, count, seed=seed)
        Image.fromarray(sample.image).save(folder / "images" / f"{stem}.jpg", quality=95)
        write_shanghaitech_gt(folder / "ground-truth" / f"GT_{stem}.mat", sample.points)
    return root


def interruptible() -> None:
    """``preexec_fn`` of a child process a test interrupts with SIGINT: a test run started in
    the background (``nohup pytest &``) ignores SIGINT, and a child would inherit that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
