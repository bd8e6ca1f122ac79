"""Named zones and heatmaps (issue 25, item 5, without tracking and counting lines): zone files,
counts per zone against a slow reference, ``xmask predict --zones/--heatmap`` on images and
videos."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_run
from test_roi import _inside_reference
from xmask.apps.zones import Zone, parse_zones, read_zones, zone_counts
from xmask.cli import EXIT_ERROR, EXIT_OK, main
from xmask.data.render import DensityGrid, heatmap_picture
from xmask.data.synthetic import make_crowd, make_crowd_folder
from xmask.errors import DataError, UsageError
from xmask.inference.prediction import Prediction

GATE = [[0.5, 0.5], [50.3, 0.5], [50.3, 63.5], [0.5, 63.5]]
RIGHT = [[40.2, 0.0], [90.0, 0.0], [90.0, 64.0], [40.2, 64.0]]


TWO_ZONES = [{"name": "left", "polygon": GATE}, {"name": "right", "polygon": RIGHT}]


def _zones_file(path: Path, zones: list[dict]) -> Path:
    path.write_text(json.dumps({"zones": zones}))
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two images, a tiny run and ``zones.json`` holding :data:`TWO_ZONES`."""
    root = tmp_path_factory.mktemp("zones")
    make_run(root)
    make_crowd_folder(root / "images", 2, height=64, width=90, n_heads=(8, 14), masks=False)
    _zones_file(root / "zones.json", TWO_ZONES)
    return root


def _predict(root: Path, *args: str) -> int:
    return main(["predict", *args, "--model", str(root / "run"), "--device", "cpu"])


def _reference_counts(points: np.ndarray, zones: list[Zone]) -> dict[str, int]:
    """Heads per zone, one point at a time: the centre of its pixel, even-odd ray casting."""
    counts = {}
    for zone in zones:
        n = 0
        for x, y in points:
            n += _inside_reference(zone.polygon, np.floor(x) + 0.5, np.floor(y) + 0.5)
        counts[zone.name] = n
    return counts


def test_zone_counts_match_a_slow_reference() -> None:
    rng = np.random.default_rng(3)
    for trial in range(20):
        zones = []
        for k in range(3):
            centre = rng.uniform(10, 90, 2)
            angles = np.sort(rng.uniform(0, 2 * np.pi, rng.integers(3, 9)))
            radii = rng.uniform(5, 40, len(angles))
            polygon = centre + np.stack([np.cos(angles), np.sin(angles)], 1) * radii[:, None]
            zones.append(Zone(f"z{k}", polygon))
        points = rng.uniform(0, 100, (200, 2)).astype(np.float32)
        assert zone_counts(points, zones) == _reference_counts(points, zones), trial


def test_a_head_counts_in_every_zone_holding_it() -> None:
    zones = parse_zones({"zones": TWO_ZONES})
    points = np.array([[10.0, 10.0], [45.0, 30.0], [80.0, 5.0]], dtype=np.float32)
    assert zone_counts(points, zones) == {"left": 2, "right": 2}
    prediction = Prediction(3, points, np.ones(3, np.float32), None, (64, 90), 0.0, 0.0)
    assert zone_counts(prediction, zones) == {"left": 2, "right": 2}
    assert zone_counts(np.zeros((0, 2)), zones) == {"left": 0, "right": 0}


def test_yaml_zones(tmp_path: Path) -> None:
    path = tmp_path / "zones.yaml"
    path.write_text("zones:\n  - name: gate\n    polygon: [[0, 0], [10, 0], [10, 10]]\n")
    (zone,) = read_zones(path)
    assert zone.name == "gate" and zone.polygon.shape == (3, 2)
    path.write_text("!!python/object/apply:os.system ['echo hi']\n")  # safe_load refuses it
    with pytest.raises(DataError, match=r"zones\.yaml"):
        read_zones(path)


BAD = {
    "not a mapping": [1, 2],
    "other keys": {"zones": [], "extra": 1},
    "no zones": {"zones": []},
    "two names": {"zones": [{"name": "a", "polygon": GATE}, {"name": "a", "polygon": RIGHT}]},
    "two vertices": {"zones": [{"name": "a", "polygon": [[0, 0], [1, 1]]}]},
    "nan vertex": {"zones": [{"name": "a", "polygon": [[0, 0], [1, "nan"], [2, 3]]}]},
    "text vertex": {"zones": [{"name": "a", "polygon": [[0, 0], [1, "x"], [2, 3]]}]},
    "empty name": {"zones": [{"name": "", "polygon": GATE}]},
    "newline name": {"zones": [{"name": "a\nb", "polygon": GATE}]},
    "missing polygon": {"zones": [{"name": "a"}]},
    "too many vertices": {"zones": [{"name": "a", "polygon": [[i, i % 7] for i in range(1001)]}]},
    "too many zones": {"zones": [{"name": f"z{i}", "polygon": GATE} for i in range(101)]},
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_zone_files_name_the_file(case: str, tmp_path: Path) -> None:
    path = tmp_path / "zones.json"
    path.write_text(json.dumps(BAD[case]))
    with pytest.raises(DataError, match=r"zones\.json"):
        read_zones(path)
    with pytest.raises(UsageError):
        parse_zones(BAD[case])


def test_bad_zone_file_fails_before_the_model_loads(tmp_path: Path, caplog) -> None:
    make_crowd_folder(tmp_path / "images", 1, height=32, width=32, n_heads=(2, 3), masks=False)
    path = tmp_path / "zones.json"
    path.write_text("{not json")
    args = [str(tmp_path / "images"), "--out", str(tmp_path / "out"), "--zones", str(path)]
    code = main(["predict", *args, "--model", str(tmp_path / "no-such-model")])
    assert code == EXIT_ERROR
    assert "zones.json" in caplog.text and "no-such-model" not in caplog.text
    assert not (tmp_path / "out" / "predictions").exists()
    assert main(["predict", *args[:3], "--heatmap-sigma", "3"]) == EXIT_ERROR  # needs --heatmap


def test_predict_writes_zone_counts_and_redoes_on_other_zones(setup: Path, tmp_path: Path) -> None:
    zones = _zones_file(tmp_path / "zones.json", TWO_ZONES)  # changed below
    out = tmp_path / "out"
    args = [str(setup / "images"), "--out", str(out), "--zones", str(zones)]
    assert _predict(setup, *args) == EXIT_OK
    records = {p.stem: json.loads(p.read_text()) for p in (out / "predictions").glob("*.json")}
    parsed = read_zones(zones)
    totals = {"left": 0, "right": 0}
    for record in records.values():
        expected = _reference_counts(np.asarray(record["points"]), list(parsed))
        assert record["zones"] == expected
        for name in totals:
            totals[name] += expected[name]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["zones"] == totals and sum(totals.values()) > 0
    with (out / "counts.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 and list(rows[0]) == ["image", "count", "zone:left", "zone:right"]
    assert sum(int(r["zone:left"]) for r in rows) == totals["left"]

    assert _predict(setup, *args) == EXIT_OK
    assert json.loads((out / "summary.json").read_text())["already_done"] == 2
    _zones_file(zones, [{"name": "left", "polygon": GATE}])  # other zones: redone
    assert _predict(setup, *args) == EXIT_OK
    summary = json.loads((out / "summary.json").read_text())
    assert summary["redone"] == 2 and summary["zones"] == {"left": totals["left"]}


def test_heatmap_density_and_picture() -> None:
    grid = DensityGrid((60, 80), sigma=3.0)
    grid.add(np.array([[20.0, 30.0], [20.5, 30.2], [60.0, 10.0]]))
    density = grid.density()
    assert density.shape == (60, 80) and density.max() == pytest.approx(1.0, abs=0.05)
    assert density[30, 20] > density[10, 60] > density[50, 70] == pytest.approx(0.0, abs=1e-3)
    big = DensityGrid((3000, 5000), sigma=40.0)  # a coarse grid, resized: fast at any size
    assert big.shape[1] <= 1024
    big.add(np.array([[2500.0, 1500.0]]))
    assert big.density()[1500, 2500] > 0.9
    image = np.full((60, 80, 3), 128, np.uint8)
    picture = heatmap_picture(image, density)
    assert picture.shape == (60, 80, 3) and picture[30, 20].mean() > 2 * picture[50, 70].mean()


def test_predict_heatmap_is_brighter_at_the_heads(setup: Path, tmp_path: Path) -> None:
    out = tmp_path / "heat"
    args = [str(setup / "images"), "--out", str(out), "--heatmap", "--heatmap-sigma", "3"]
    assert _predict(setup, *args) == EXIT_OK
    for record_path in (out / "predictions").glob("*.json"):
        record = json.loads(record_path.read_text())
        picture = np.asarray(Image.open(out / "heatmaps" / f"{record_path.stem}.png"))
        assert picture.shape == (record["height"], record["width"], 3)
        points = np.floor(np.asarray(record["points"])).astype(int)
        at_heads = picture[points[:, 1], points[:, 0]].mean()
        assert at_heads > picture.mean()


def test_video_gets_zone_columns_and_one_heatmap(setup: Path, tmp_path: Path) -> None:
    pytest.importorskip("av")
    from test_predict_cli import _write_video

    frames = [make_crowd(64, 96, 8 + i, seed=i).image for i in range(4)]
    _write_video(tmp_path / "clip.mp4", frames)
    out = tmp_path / "video"
    zones = str(setup / "zones.json")
    args = [str(tmp_path / "clip.mp4"), "--out", str(out), "--zones", zones, "--heatmap"]
    assert _predict(setup, *args) == EXIT_OK
    with (out / "videos" / "clip.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 and list(rows[0]) == [
        "frame",
        "time_s",
        "count",
        "zone:left",
        "zone:right",
    ]
    assert all(int(r["zone:left"]) <= int(r["count"]) for r in rows)
    assert sum(int(r["zone:left"]) + int(r["zone:right"]) for r in rows) > 0
    picture = np.asarray(Image.open(out / "videos" / "clip-heatmap.png"))
    assert picture.shape == (64, 96, 3)
