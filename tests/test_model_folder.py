"""Model folders: export from a run, load back, names, and refusal of bad folders."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_run, tiny_crowd, tiny_model
from xmask.data.synthetic import make_crowd
from xmask.inference.checkpoint import CheckpointError
from xmask.inference.count_rule import CountRule
from xmask.inference.loading import export_run, load_inference_model
from xmask.inference.model_folder import (
    CARD_FILE,
    FORMAT,
    MODELS_ENV,
    WEIGHTS_FILE,
    load_model_folder,
    read_model_card,
    record_metrics,
    registered_models,
    resolve_model,
)
from xmask.inference.predictor import Predictor
from xmask.inference.scale import ONE_PASS, ScaleRule


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(run, its exported model folder)``."""
    root = tmp_path_factory.mktemp("export")
    crowd = tiny_crowd(root / "crowd", images=5, labeled=2)
    run = make_run(root, threshold=0.3, crowd=crowd)
    return run, export_run(run, root / "tiny-model", description="a test model")


@pytest.fixture(scope="module")
def exported(trained: tuple[Path, Path]) -> Path:
    return trained[1]


def _strings(value: object) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def _copy(folder: Path, dest: Path) -> Path:
    dest.mkdir()
    for name in (CARD_FILE, WEIGHTS_FILE):
        (dest / name).write_bytes((folder / name).read_bytes())
    return dest


def test_export_describes_the_run(exported: Path) -> None:
    card = read_model_card(exported)
    assert card.name == "tiny-model" and card.description == "a test model"
    assert card.count_threshold == pytest.approx(0.3)
    assert card.architecture.mask_head and card.architecture.weights is None
    training = card.training
    assert training["dataset"] == "folder" and training["labeled_images"] == 2
    assert training["train_images"] == 5 and training["label_fraction"] == pytest.approx(0.4)
    assert training["step"] == 1 and training["network"] == "teacher"
    content = json.loads((exported / CARD_FILE).read_text())
    assert content["format"] == FORMAT and len(content["weights"]["sha256"]) == 64


def test_held_out_validation_images_are_not_counted_as_labeled(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained[0], run)
    crowd = trained[0].parent / "crowd"
    (crowd / "val.txt").write_text("syn_0004.png\n")
    config = (run / "config.yaml").read_text()
    config = config.replace(f"labeled: {crowd / 'labeled.txt'}", "labeled: all")
    (run / "config.yaml").write_text(
        config.replace("validation: null", f"validation: {crowd / 'val.txt'}")
    )
    training = read_model_card(export_run(run, tmp_path / "model")).training
    assert training["labeled_images"] == 4 and training["train_images"] == 5
    assert training["validation"] == "val.txt" and training["validation_images"] == 1


def test_card_holds_no_path_of_the_training_machine(trained: tuple[Path, Path]) -> None:
    run, exported = trained
    content = json.loads((exported / CARD_FILE).read_text())
    assert "root" not in content["training"] and "run" not in content["training"]
    for text in _strings(content):
        assert not Path(text).is_absolute(), text
        assert str(run.parent) not in text


def test_loaded_model_predicts_like_the_original(exported: Path) -> None:
    model, _ = load_model_folder(exported)
    original = tiny_model()
    for (name, a), b in zip(
        model.state_dict().items(), original.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    image = make_crowd(64, 80, 10, seed=2).image
    predictor = Predictor.load(exported, device="cpu")
    assert predictor.count_rule.threshold == pytest.approx(0.3) and predictor.source == exported
    reference = Predictor(original, "cpu", count_threshold=0.3)(image)
    np.testing.assert_array_equal(predictor(image).labels, reference.labels)
    assert Predictor.load(exported, device="cpu", threshold=-1.0).count_rule == CountRule(-1.0)


def test_half_precision_folder_is_smaller_and_close(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    run, exported = trained
    half = export_run(run, tmp_path / "half", dtype="float16")
    assert (half / WEIGHTS_FILE).stat().st_size < 0.6 * (exported / WEIGHTS_FILE).stat().st_size
    model, _ = load_model_folder(half)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    image = torch.rand(1, 3, 64, 64)
    full, _ = load_model_folder(exported)
    with torch.no_grad():
        diff = (model(image).logits - full(image).logits).abs().max()
    assert diff < 0.05


def test_names_resolve_through_the_user_folder(
    exported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MODELS_ENV, str(tmp_path))
    _copy(exported, tmp_path / "mine")
    assert resolve_model("mine") == tmp_path / "mine"
    assert "mine" in registered_models()
    loaded = load_inference_model("mine", torch.device("cpu"))
    assert loaded.card is not None and loaded.dataset is not None
    assert loaded.dataset[0] == "folder" and loaded.dataset[1] == ""  # a card names no folder
    with pytest.raises(CheckpointError, match=r"registered: .*mine"):
        resolve_model("nobody")


def test_tampered_weights_are_refused(exported: Path, tmp_path: Path) -> None:
    folder = _copy(exported, tmp_path / "tampered")
    data = bytearray((folder / WEIGHTS_FILE).read_bytes())
    data[-100] ^= 0xFF
    (folder / WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum differs"):
        load_model_folder(folder)


def test_incomplete_folders_are_refused(exported: Path, tmp_path: Path) -> None:
    no_weights = _copy(exported, tmp_path / "no-weights")
    (no_weights / WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError, match="weights file not found"):
        load_model_folder(no_weights)
    no_key = _copy(exported, tmp_path / "no-key")
    content = json.loads((no_key / CARD_FILE).read_text())
    del content["count_threshold"]
    (no_key / CARD_FILE).write_text(json.dumps(content))
    with pytest.raises(CheckpointError, match="missing count_threshold"):
        load_model_folder(no_key)
    with pytest.raises(CheckpointError, match="not an xmask model folder"):
        read_model_card(tmp_path)


def test_old_foreign_and_pickled_files_are_refused(exported: Path, tmp_path: Path) -> None:
    old = _copy(exported, tmp_path / "old")
    content = json.loads((old / CARD_FILE).read_text())
    (old / CARD_FILE).write_text(json.dumps(content | {"format": "xmask-model-0"}))
    with pytest.raises(CheckpointError, match="xmask-model-0"):
        load_model_folder(old)
    (tmp_path / "bad-json" / CARD_FILE).parent.mkdir()
    (tmp_path / "bad-json" / CARD_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt JSON"):
        load_model_folder(tmp_path / "bad-json")
    pickled = _copy(exported, tmp_path / "pickled")
    torch.save(tiny_model().state_dict(), pickled / WEIGHTS_FILE)
    content = json.loads((pickled / CARD_FILE).read_text())
    content["weights"]["sha256"] = hashlib.sha256((pickled / WEIGHTS_FILE).read_bytes()).hexdigest()
    (pickled / CARD_FILE).write_text(json.dumps(content))
    with pytest.raises(CheckpointError, match="pickled checkpoints are refused"):
        load_model_folder(pickled)
    torch.save({"x": 1}, tmp_path / "model.pth")
    with pytest.raises(CheckpointError):
        load_inference_model(tmp_path / "model.pth", torch.device("cpu"))


def test_weights_of_another_architecture_are_refused(exported: Path, tmp_path: Path) -> None:
    other = _copy(exported, tmp_path / "other")
    content = json.loads((other / CARD_FILE).read_text())
    content["architecture"]["neck_channels"] = 48
    (other / CARD_FILE).write_text(json.dumps(content))
    with pytest.raises(CheckpointError, match="do not fit the architecture"):
        load_model_folder(other)


def test_metrics_are_recorded(exported: Path, tmp_path: Path) -> None:
    folder = _copy(exported, tmp_path / "scored")
    record_metrics(folder, "shb-test", {"mae": 9.5})
    assert read_model_card(folder).metrics == {"shb-test": {"mae": 9.5}}
    load_model_folder(folder)  # the weights' checksum is unaffected


def test_cli_export_list_info_predict_and_record(
    trained: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    from xmask.cli import EXIT_OK, main

    monkeypatch.setenv(MODELS_ENV, str(tmp_path / "models"))
    run = str(trained[0])
    crowd = str(trained[1].parent / "crowd")
    assert main(["model", "export", run, "tiny", "--description", "tiny test", "--half"]) == 0
    assert read_model_card(tmp_path / "models" / "tiny").weights["dtype"] == "float16"
    assert read_model_card(tmp_path / "models" / "tiny").scale == ScaleRule()  # adaptive
    assert main(["model", "export", run, str(tmp_path / "one"), "--scale", "off"]) == 0
    assert read_model_card(tmp_path / "one").scale == ONE_PASS
    segment = ["--segment", "lam=1.6", "size_prior=1.5", "connected=false"]
    assert main(["model", "export", run, str(tmp_path / "tuned"), *segment]) == 0
    tuned = read_model_card(tmp_path / "tuned").segment
    assert (tuned.lam, tuned.tau_g, tuned.size_prior, tuned.connected) == (1.6, 1.1, 1.5, False)
    assert main(["model", "export", run, str(tmp_path / "bad"), "--segment", "lambda=2"]) == 1
    assert not (tmp_path / "bad").exists()
    capsys.readouterr()
    assert main(["model", "list"]) == EXIT_OK
    assert "tiny: tiny test" in capsys.readouterr().out
    assert main(["model", "info", "tiny"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["name"] == "tiny"
    monkeypatch.chdir(tmp_path)
    args = ["evaluate", "--model", "tiny", "--split", "train", "--device", "cpu", "--record"]
    assert main(args) == 1  # the card names its dataset, not the training machine's folder
    assert main([*args, "--root", crowd]) == EXIT_OK
    recorded = read_model_card(tmp_path / "models" / "tiny").metrics["folder-train"]
    assert recorded["images"] == 5 and recorded["mae"] >= 0
    assert (tmp_path / "models" / "tiny" / "eval-folder-train.csv").is_file()
    assert main(["predict", crowd, "--model", "tiny", "--out", "p", "--device", "cpu"]) == 0
    record = json.loads(next((tmp_path / "p" / "predictions").iterdir()).read_text())
    assert record["model"] == str(tmp_path / "models" / "tiny")


def test_two_regime_rule_round_trips_and_a_malformed_one_is_refused(
    exported: Path, tmp_path: Path
) -> None:
    folder = _copy(exported, tmp_path / "two")
    content = json.loads((folder / CARD_FILE).read_text())
    assert content["count_split"] is None and content["count_dense_threshold"] is None
    content |= {"count_split": 4.5, "count_dense_threshold": 0.7}
    (folder / CARD_FILE).write_text(json.dumps(content))
    assert read_model_card(folder).count_rule == CountRule(0.3, 4.5, 0.7)
    assert Predictor.load(folder, device="cpu").count_rule == CountRule(0.3, 4.5, 0.7)
    old = {k: v for k, v in content.items() if k not in ("count_split", "count_dense_threshold")}
    (folder / CARD_FILE).write_text(json.dumps(old))
    assert read_model_card(folder).count_rule == CountRule(0.3)
    (folder / CARD_FILE).write_text(json.dumps(content | {"count_dense_threshold": None}))
    with pytest.raises(CheckpointError, match="bad value"):
        read_model_card(folder)
