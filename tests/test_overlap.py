"""Throughput mode (issue 26, item 4): stages overlapped in threads give the results of one item
after another — in order, with failures carried — and ``xmask predict --pipeline`` writes the
files ``--no-pipeline`` writes, a corrupt file in the middle reported and skipped and resumed
images kept."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from conftest import make_run, tiny_model
from xmask.apps.frames import AnnotatedWriter
from xmask.apps.overlap import Failed, Settled, run_stages
from xmask.cli import EXIT_SKIPPED, main
from xmask.data.image_io import load_label_map
from xmask.data.synthetic import make_crowd, make_crowd_folder
from xmask.inference.predictor import Predictor


def _stages() -> tuple:
    def double(x: int) -> int:
        if x == 3:
            raise ValueError("three")
        return 2 * x

    def settle(x: int) -> int | Settled:
        return Settled("big") if x > 10 else x + 1

    return (double, settle, str)


@pytest.mark.parametrize("threads", [False, True])
def test_stages_keep_order_and_carry_failures(threads: bool) -> None:
    results = list(run_stages(range(8), _stages(), threads=threads, depth=1))
    assert [item for item, _ in results] == list(range(8))
    assert [r for _, r in results if not isinstance(r, Settled)] == ["1", "3", "5", "9", "11"]
    failed = results[3][1]
    assert isinstance(failed, Failed) and str(failed.value) == "three"
    assert [r.value for _, r in results[6:]] == ["big", "big"]


@pytest.mark.parametrize("threads", [False, True])
def test_an_error_of_the_items_comes_after_the_items_before_it(threads: bool) -> None:
    def items() -> Iterator[int]:
        yield from (1, 2)
        raise OSError("gone")

    seen = []
    with pytest.raises(OSError, match="gone"):
        for item, _ in run_stages(items(), _stages(), threads=threads):
            seen.append(item)
    assert seen == [1, 2]


def test_closing_early_stops_the_threads() -> None:
    before = threading.active_count()
    results = run_stages(range(1000), _stages(), depth=1)
    assert next(results)[0] == 0
    results.close()
    assert threading.active_count() == before


def test_run_network_then_predict_from_equals_set_image_then_predict() -> None:
    predictor = Predictor(tiny_model(), device="cpu")
    crowd = make_crowd(64, 90, 10, seed=3)
    features = predictor.run_network(crowd.image)
    assert predictor.features is None  # kept nowhere
    given = predictor.predict_from(features)
    kept = predictor(crowd.image)
    np.testing.assert_array_equal(given.points, kept.points)
    np.testing.assert_array_equal(given.labels, kept.labels)
    assert given.count == kept.count


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("overlap")
    make_crowd_folder(root / "images", 5, height=64, width=90, n_heads=(5, 12), masks=False)
    (root / "images" / "syn_0002b.png").write_bytes(b"not a png")  # in the middle of the order
    make_run(root)
    return root


def _predict(root: Path, out: Path, *args: str) -> int:
    images = str(root / "images")
    model = ["--model", str(root / "run"), "--device", "cpu"]
    return main(["predict", images, "--out", str(out), *model, *args])


def _outputs(out: Path) -> dict[str, object]:
    """Every output but the timings: records without ``seconds``, label maps, points."""
    found: dict[str, object] = {}
    for path in sorted((out / "predictions").glob("*.json")):
        record = json.loads(path.read_text())
        del record["seconds"]
        found[path.name] = record
    for path in sorted((out / "masks").glob("*.png")):
        found[path.name] = load_label_map(path).tolist()
    for path in sorted((out / "points").glob("*.txt")):
        found[path.name] = path.read_text()
    found["counts.csv"] = (out / "counts.csv").read_text()
    return found


def test_pipeline_writes_what_one_after_another_writes(folder: Path, tmp_path: Path) -> None:
    alone, overlapped = tmp_path / "alone", tmp_path / "overlapped"
    assert _predict(folder, alone, "--no-pipeline") == EXIT_SKIPPED
    assert _predict(folder, overlapped, "--pipeline") == EXIT_SKIPPED
    assert _outputs(overlapped) == _outputs(alone)
    assert len(_outputs(alone)) == 3 * 5 + 1
    for out in (alone, overlapped):
        summary = json.loads((out / "summary.json").read_text())
        assert summary["predicted"] == summary["images"] == 5
        assert [s["name"] for s in summary["skipped"]] == ["syn_0002b.png"]

    # resume: the finished images are kept; a removed one is redone, the same
    (overlapped / "predictions" / "syn_0003.json").unlink()
    assert _predict(folder, overlapped, "--pipeline") == EXIT_SKIPPED
    summary = json.loads((overlapped / "summary.json").read_text())
    assert (summary["already_done"], summary["predicted"], summary["redone"]) == (4, 1, 0)
    assert _outputs(overlapped) == _outputs(alone)


def test_the_first_of_two_same_named_images_keeps_the_name(folder: Path, tmp_path: Path) -> None:
    twin = tmp_path / "twin"
    twin.mkdir()
    shutil.copyfile(folder / "images" / "syn_0004.png", twin / "syn_0000.png")
    first = str(folder / "images" / "syn_0000.png")
    for mode in ("--no-pipeline", "--pipeline"):
        out = tmp_path / mode
        args = ["predict", first, str(twin / "syn_0000.png"), "--out", str(out), mode]
        assert main([*args, "--model", str(folder / "run")]) == EXIT_SKIPPED
        summary = json.loads((out / "summary.json").read_text())
        assert summary["predicted"] == 1 and len(summary["skipped"]) == 1
        assert (out / ".owners" / "syn_0000").read_text() == str(Path(first).resolve())


def test_a_pipelined_video_gives_the_same_rows_crossings_and_frames(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("av")
    from test_predict_cli import _write_video

    pictures: list[np.ndarray] = []  # as drawn: the H.264 encoder itself is not deterministic
    write = AnnotatedWriter.write

    def kept(writer: AnnotatedWriter, picture: np.ndarray) -> None:
        pictures.append(picture)
        write(writer, picture)

    monkeypatch.setattr(AnnotatedWriter, "write", kept)
    frames = [np.roll(make_crowd(64, 96, 10, seed=1).image, 6 * i, axis=1) for i in range(6)]
    _write_video(tmp_path / "clip.mp4", frames)
    found = []
    for mode in ("--no-pipeline", "--pipeline"):
        out = tmp_path / mode
        args = [str(tmp_path / "clip.mp4"), "--out", str(out), "--line", "48,0 48,64", mode]
        assert main(["predict", *args, "--heatmap", "--model", str(folder / "run")]) == 0
        record = json.loads((out / "videos" / "clip.json").read_text())
        table = (out / "videos" / "clip.csv").read_text()
        heatmap = (out / "videos" / "clip-heatmap.png").read_bytes()
        found.append((table, record["lines"], record["tracks"], heatmap))
    assert found[0][0].count("\n") == 7 and found[1] == found[0]
    assert len(pictures) == 12
    np.testing.assert_array_equal(np.stack(pictures[6:]), np.stack(pictures[:6]))
