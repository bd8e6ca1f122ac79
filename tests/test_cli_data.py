"""``xmask data stats`` end to end: exact counts on the real data, bad items skipped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xmask.cli import EXIT_SKIPPED, main

EXPECTED = {
    ("sha", "train"): (300, 162_413),
    ("sha", "test"): (182, 78_862),
    ("shb", "train"): (400, 49_151),
    ("shb", "test"): (316, 39_121),
}


def _stats(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict]:
    code = main(["data", "stats", *args, "--json"])
    return code, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(("dataset", "split"), list(EXPECTED))
def test_real_counts(
    shanghaitech: Path, capsys: pytest.CaptureFixture[str], dataset: str, split: str
) -> None:
    code, stats = _stats(
        capsys, "--dataset", dataset, "--root", str(shanghaitech), "--split", split
    )
    assert code == 0
    assert (stats["images"], stats["points"]) == EXPECTED[(dataset, split)]
    assert stats["points_outside"] == 0 and stats["skipped"] == []
    if (dataset, split) == ("sha", "test"):
        assert stats["duplicate_points"] == 118
        assert stats["greyscale_images"] > 0


def test_labeled_and_unlabeled_subsets(
    shanghaitech: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ("--dataset", "sha", "--root", str(shanghaitech), "--split", "train")
    _, labeled = _stats(capsys, *common, "--labeled", "sha-40")
    _, unlabeled = _stats(capsys, *common, "--unlabeled", "sha-40")
    assert (labeled["images"], unlabeled["images"]) == (120, 180)
    assert labeled["points"] + unlabeled["points"] == 162_413


def _folder(root: Path) -> None:
    rng = np.random.default_rng(0)
    for name, points in (("a", "1 1\n2 2\n2 2\n"), ("b", "3 3\n50 1\n"), ("c", "")):
        Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(
            root / f"{name}.png"
        )
        (root / f"{name}.txt").write_text(points)
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(root / "grey.png")
    (root / "grey.txt").write_text("5 5\n")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (root / "broken.txt").write_text("1 1\n")
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(root / "nogt.png")


def test_bad_items_are_reported_and_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _folder(tmp_path)
    code, stats = _stats(capsys, "--dataset", "folder", "--root", str(tmp_path))
    assert code == EXIT_SKIPPED
    assert stats["images"] == 4 and stats["points"] == 6
    assert (stats["count_min"], stats["count_median"], stats["count_max"]) == (0, 1.5, 3)
    assert stats["duplicate_points"] == 2 and stats["points_outside"] == 1
    assert stats["greyscale_names"] == ["grey.png"]
    skipped = {s["name"]: s["problem"] for s in stats["skipped"]}
    assert set(skipped) == {"broken.png", "nogt.png"}
    assert "broken.png" in skipped["broken.png"] and "no point file" in skipped["nogt.png"]


def test_human_readable_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _folder(tmp_path)
    main(["data", "stats", "--dataset", "folder", "--root", str(tmp_path)])
    out = capsys.readouterr().out
    assert "images            4" in out and "skipped items     2" in out


def test_missing_root_is_a_clear_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    code = main(["data", "stats", "--dataset", "sha", "--root", str(tmp_path / "none")])
    assert code == 1 and "dataset root folder not found" in caplog.text


def test_synth_then_stats_and_read_back(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from xmask.data.readers import open_dataset

    out = tmp_path / "syn"
    assert main(["data", "synth", "--out", str(out), "--images", "3", "--heads", "20-40"]) == 0
    capsys.readouterr()
    code, stats = _stats(capsys, "--dataset", "folder", "--root", str(out))
    assert code == 0 and stats["images"] == 3 and 60 <= stats["points"] <= 120
    for sample in open_dataset("folder", out):
        assert sample.labels is not None
        cols, rows = np.floor(sample.points).astype(int).T
        np.testing.assert_array_equal(sample.labels[rows, cols], np.arange(1, sample.count + 1))


def test_synth_rejects_bad_size() -> None:
    with pytest.raises(SystemExit):
        main(["data", "synth", "--out", "x", "--size", "big"])
