"""Shared fixtures: where the real data lie (skip cleanly where absent)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

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


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> Iterator[None]:
    """Tests use small tensors: intra-op threads only add overhead on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
