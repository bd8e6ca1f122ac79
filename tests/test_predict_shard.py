"""``xmask predict`` under ``torchrun`` (issue 25, item 6): each rank predicts its share of the
sources into one folder, rank 0 writes one summary; the result equals a single process's, and a
sharded run resumes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_run
from xmask.apps.batch import BatchSummary
from xmask.apps.shard import merge_summaries, shard_sources
from xmask.apps.sources import Source
from xmask.cli import EXIT_OK, main
from xmask.data.synthetic import make_crowd_folder
from xmask.device import DistInfo


def test_same_named_sources_meet_in_one_rank() -> None:
    names = ["a.jpg", "b.jpg", "a.png", "c.jpg", "d.jpg", "b.tif"]
    sources = [Source(n, Path(f"/x/{n}")) for n in names]
    shares = [shard_sources(sources, DistInfo(rank, 2, rank)) for rank in (0, 1)]
    assert [s.name for s in shares[0]] == ["a.jpg", "a.png", "c.jpg"]
    assert [s.name for s in shares[1]] == ["b.jpg", "d.jpg", "b.tif"]
    assert shard_sources(sources, DistInfo()) == sources
    three = [shard_sources(sources, DistInfo(rank, 3, 0)) for rank in range(3)]
    assert sorted(s.name for share in three for s in share) == sorted(names)


def test_summaries_add_up() -> None:
    one = BatchSummary("m", "rule", predicted=2, seconds=1.5, post_s=0.5)
    two = BatchSummary("m", "rule", predicted=1, already_done=3, network_s=2.0)
    two.skip("bad.jpg", "not an image")
    merged = merge_summaries([one, two])
    assert (merged.predicted, merged.already_done, merged.seconds) == (3, 3, 1.5)
    assert (merged.network_s, merged.post_s, merged.skipped[0]["name"]) == (2.0, 0.5, "bad.jpg")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shard")
    make_crowd_folder(root / "images", 5, height=64, width=90, n_heads=(5, 12), masks=False)
    make_run(root)
    return root


def _torchrun(root: Path, out: Path) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "xmask", "predict", str(root / "images"), "--model", str(root / "run"),
        "--device", "cpu", "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def test_two_ranks_write_what_one_process_writes(setup: Path, tmp_path: Path) -> None:
    single = tmp_path / "single"
    args = ["predict", str(setup / "images"), "--model", str(setup / "run"), "--device", "cpu"]
    assert main([*args, "--out", str(single)]) == EXIT_OK
    sharded = tmp_path / "sharded"
    done = _torchrun(setup, sharded)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count(" predicted by ") == 1  # rank 0 reports for both
    summary = json.loads((sharded / "summary.json").read_text())
    assert summary["predicted"] == 5 and summary["images"] == 5
    for path in sorted((single / "predictions").glob("*.json")):
        mine = json.loads((sharded / "predictions" / path.name).read_text())
        theirs = json.loads(path.read_text())
        assert mine["points"] == theirs["points"] and mine["count"] == theirs["count"]
    assert (sharded / "counts.csv").read_text() == (single / "counts.csv").read_text()
    again = _torchrun(setup, sharded)
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads((sharded / "summary.json").read_text())
    assert summary["already_done"] == 5 and summary["predicted"] == 0
