"""The model shipped inside the package: present, complete, usable offline, and as good as its
card says."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from xmask.cli import EXIT_OK, main
from xmask.data.synthetic import make_crowd
from xmask.inference.model_folder import (
    DEFAULT_MODEL,
    load_model_folder,
    registered_models,
    resolve_model,
)
from xmask.inference.predictor import Predictor


def test_the_default_model_is_shipped_and_describes_itself() -> None:
    assert DEFAULT_MODEL in registered_models()
    model, card = load_model_folder(resolve_model(None))
    assert card.name == DEFAULT_MODEL and model.mask_head is not None
    training = card.training
    assert training["labeled_images"] > 0 and 0 < training["label_fraction"] <= 1
    assert training["dataset"] and training["labeled"] and training["recipes"]
    assert card.metrics["shb-test"]["mae"] <= 15 and card.metrics["sha-test"]["mae"] <= 100


def test_the_default_model_predicts_with_no_other_file() -> None:
    crowd = make_crowd(192, 256, 12, seed=3)
    result = Predictor.load(device="cpu")(crowd.image)
    assert result.labels is not None and result.labels.shape == (192, 256)
    assert len(result.points) == len(result.scores) and np.all(result.scores > 0)
    assert set(np.unique(result.labels)) <= set(range(len(result.points) + 1))


def test_the_default_model_ships_its_int8_graph() -> None:
    pytest.importorskip("onnxruntime")
    card = load_model_folder(resolve_model(None))[1]
    assert card.int8 is not None and "ShanghaiTech" in card.int8["calibration"]
    metrics = card.int8["metrics"]["shb-test"]
    assert metrics["mae"] <= 1.02 * metrics["mae_torch"]  # shipped only because it held
    crowd = make_crowd(192, 256, 12, seed=3)
    fast = Predictor.load(device="cpu", backend="onnx-int8")
    result = fast(crowd.image)
    assert fast.onnx is not None and fast.onnx.sha256 == card.int8["sha256"]
    assert result.labels is not None and result.labels.shape == (192, 256)


def test_readme_first_command(shanghaitech: Path, tmp_path: Path) -> None:
    image = shanghaitech / "part_B" / "test_data" / "images" / "IMG_1.jpg"
    out = tmp_path / "first-prediction"
    assert main(["predict", str(image), "--out", str(out)]) == EXIT_OK
    record = json.loads((out / "predictions" / "IMG_1.json").read_text())
    assert record["count"] > 0 and len(record["points"]) == len(record["areas"])
    assert (out / "overlays" / "IMG_1.jpg").stat().st_size > 0


@pytest.mark.slow
@pytest.mark.parametrize(("dataset", "bound"), [("shb", 15), ("sha", 100)])
def test_shipped_model_on_shanghaitech_test(
    dataset: str,
    bound: float,
    shanghaitech: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ["evaluate", "--dataset", dataset, "--root", str(shanghaitech), "--split", "test"]
    assert main([*args, "--json", "--csv", str(tmp_path / f"{dataset}.csv")]) == EXIT_OK
    mae = json.loads(capsys.readouterr().out)["mae"]
    _, card = load_model_folder(resolve_model(None))
    recorded = card.metrics[f"{dataset}-test"]["mae"]
    assert mae <= bound and mae == pytest.approx(recorded, abs=0.05)
