"""``xmask bench`` on a tiny fake ShanghaiTech A test split, without baselines."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from PIL import Image

from conftest import fake_shanghaitech, write_shanghaitech_gt
from xmask.apps.bench import BenchConfig, parse_baselines, parse_edges, run_bench, select_images
from xmask.apps.bench_report import bin_of, bin_ratio
from xmask.cli import EXIT_OK, EXIT_SKIPPED, main
from xmask.data.readers import open_dataset
from xmask.data.synthetic import make_crowd
from xmask.errors import UsageError

HEADS = {"IMG_1": 3, "IMG_2": 7, "IMG_3": 12, "IMG_4": 4}


@pytest.fixture(scope="module")
def shanghaitech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``part_A/test_data`` with four crowds; IMG_4's image file is corrupt."""
    root = fake_shanghaitech(tmp_path_factory.mktemp("sha"), "A", "test", HEADS)
    split = root / "part_A" / "test_data"
    (split / "images" / "IMG_4.jpg").write_bytes(b"broken")
    return root


def test_json_report_without_baselines(
    shanghaitech: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["bench", "--root", str(shanghaitech), "--per-bin", "1", "--bins", "0,5,10",
            "--baselines", "", "--device", "cpu", "--json"]  # fmt: skip
    assert main(args) == EXIT_SKIPPED  # IMG_4 is reported, the other three are timed
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 3 and report["heads"] == 3 + 7 + 12
    assert report["segmented_heads"] == report["heads"]
    assert report["predicted_count"] >= 0 and report["peak_rss_mb"] > 0
    assert [(b["lo"], b["hi"], b["images"]) for b in report["bins"]] == [
        (0, 5, 1),
        (5, 10, 1),
        (10, None, 1),
    ]
    assert all(b["xmask_s"] > 0 for b in report["bins"])
    assert report["xmask_s_per_image"] > 0
    assert 0 < report["post_network_share"] < 1
    assert report["post_network_share_over_1000_heads"] is None
    assert report["baselines"] == {}
    assert [row["name"] for row in report["skipped"]] == ["IMG_4.jpg"]  # unreadable header
    assert [row["name"] for row in report["per_image"]] == ["IMG_1.jpg", "IMG_2.jpg", "IMG_3.jpg"]
    ratios = report["slowest_over_fastest_bin"]
    assert set(ratios) == {"xmask", "xmask_predicted"}
    low, high = ratios["xmask"]["spread_over_calls"]
    assert 1 <= low <= high and ratios["xmask"]["median_calls"] >= 1


def test_bin_ratio_against_hand_figures() -> None:
    assert bin_ratio([0, 0, 1, 2], [1.0, 3.0, 4.0, 3.0]) == 2.0  # bin means 2, 4 and 3
    assert bin_ratio([0, 0], [1.0, 2.0]) is None  # one bin
    assert bin_ratio([0, 1], [1.0, None]) is None  # not run on an image


def test_table_and_a_skipped_image(shanghaitech: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["bench", "--root", str(shanghaitech), "--per-bin", "3", "--bins", "0,10",
            "--baselines", "", "--device", "cpu"]  # fmt: skip
    assert main(args) == EXIT_SKIPPED  # IMG_4's header is unreadable
    text = capsys.readouterr().out
    assert "| [0, 10) | 2 |" in text and "| [10, ∞) | 1 |" in text
    assert "skipped IMG_4.jpg" in text
    assert "slowest bin / fastest bin" in text and "xmask " in text


def test_the_int8_backend_is_benched(
    shanghaitech: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("onnxruntime")
    args = ["bench", "--root", str(shanghaitech), "--per-bin", "1", "--bins", "0,10",
            "--baselines", "", "--device", "cpu", "--json", "--backend", "onnx-int8"]  # fmt: skip
    assert main(args) == EXIT_SKIPPED
    report = json.loads(capsys.readouterr().out)
    assert "onnx-int8 backend" in report["setup"]["xmask_model"] and report["images"] == 2


def test_parsers() -> None:
    assert parse_baselines(" fastsam-x, sam-vit-b ") == ("fastsam-x", "sam-vit-b")
    assert parse_baselines("") == ()
    assert parse_edges("0,100,250") == (0, 100, 250)
    assert [bin_of(h, (0, 100, 250)) for h in (0, 99, 100, 5000)] == [0, 0, 1, 2]
    with pytest.raises(UsageError, match="unknown baseline"):
        parse_baselines("fastsam-y")
    with pytest.raises(UsageError, match="ascend"):
        parse_edges("10,5")
    for bad in ({"per_bin": 0}, {"repeat": 0}):
        with pytest.raises(UsageError, match="must be >= 1"):
            run_bench(BenchConfig(root=Path("."), baselines=(), **bad))


def test_selection_prefers_images_of_the_median_size(tmp_path: Path) -> None:
    split = tmp_path / "part_A" / "test_data"
    (split / "images").mkdir(parents=True)
    (split / "ground-truth").mkdir()
    sizes = {"IMG_1": (40, 30), "IMG_2": (80, 64), "IMG_3": (84, 64), "IMG_4": (200, 160)}
    for seed, (stem, (width, height)) in enumerate(sizes.items()):
        sample = make_crowd(height, width, 3, seed=seed)
        Image.fromarray(sample.image).save(split / "images" / f"{stem}.jpg")
        write_shanghaitech_gt(split / "ground-truth" / f"GT_{stem}.mat", sample.points)
    dataset = open_dataset("sha", tmp_path, "test")

    def names(per_bin: int) -> list[str]:
        return [dataset.items[i].name for i, _ in select_images(dataset, (0,), per_bin)[0]]

    # median pixel count 5,248: IMG_2 (5,120) then IMG_3 (5,376), both 128 px away
    assert names(1) == ["IMG_2.jpg"]
    assert names(3) == ["IMG_1.jpg", "IMG_2.jpg", "IMG_3.jpg"]


def test_a_baseline_whose_extra_is_missing_is_noted_not_failed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 27, item 15: the README's example without the fastsam extra."""
    if importlib.util.find_spec("ultralytics") is not None:
        pytest.skip("ultralytics is installed")
    root = fake_shanghaitech(tmp_path, "A", "test", {"IMG_1": 3, "IMG_2": 7})
    args = ["bench", "--root", str(root), "--per-bin", "1", "--baselines", "fastsam-x",
            "--device", "cpu", "--repeat", "1"]  # fmt: skip
    assert main([*args, "--json"]) == EXIT_OK
    report = json.loads(capsys.readouterr().out)
    baseline = report["baselines"]["fastsam-x"]
    assert baseline["status"] == "unavailable" and "xmask-crowd[fastsam]" in baseline["reason"]
    assert report["setup"]["xmask_model"].startswith("shanghaitech-lite0")  # the shipped one
    assert main(args) == EXIT_OK
    assert "xmask-crowd[fastsam]" in capsys.readouterr().out
