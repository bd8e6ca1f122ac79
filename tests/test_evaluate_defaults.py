"""``xmask evaluate`` with the shipped model: ``--record`` never edits an installed model folder
(issue 27, item 2), dataset folders come from ``--root``, ``$XMASK_DATA`` or the config file and
never from a card (item 3), and the per-image CSV never lands in the current folder (item 16)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from conftest import fake_shanghaitech, tiny_crowd
from xmask.cli import EXIT_ERROR, EXIT_OK, main
from xmask.inference import model_folder
from xmask.inference.model_folder import (
    CARD_FILE,
    DEFAULT_MODEL,
    MODELS_ENV,
    load_model_folder,
    read_model_card,
)


@pytest.fixture
def shipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the shipped models standing in for the installed package's, an empty user
    model folder, no data folder configured, and an empty current folder."""
    pretrained = tmp_path / "site-packages" / "xmask" / "pretrained"
    shutil.copytree(model_folder.shipped_models_dir() / DEFAULT_MODEL, pretrained / DEFAULT_MODEL)
    monkeypatch.setattr(model_folder, "shipped_models_dir", lambda: pretrained)
    monkeypatch.setenv(MODELS_ENV, str(tmp_path / "models"))
    monkeypatch.setenv("XMASK_CONFIG", str(tmp_path / "no-config.json"))
    monkeypatch.delenv("XMASK_DATA", raising=False)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    return pretrained / DEFAULT_MODEL


def test_record_goes_to_a_user_copy_and_states_its_images(
    shipped: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    crowd = tiny_crowd(tmp_path / "crowd", images=3, labeled=3)
    card = (shipped / CARD_FILE).read_bytes()
    args = ["evaluate", "--dataset", "folder", "--root", str(crowd), "--split", "train"]
    assert main([*args, "--device", "cpu", "--record"]) == EXIT_OK
    assert (shipped / CARD_FILE).read_bytes() == card  # the installed model is untouched
    copy = tmp_path / "models" / DEFAULT_MODEL
    recorded = read_model_card(copy).metrics["folder-train"]
    assert recorded["images"] == 3
    assert read_model_card(copy).metrics["shb-test"]["images"] == 316  # the shipped records kept
    load_model_folder(copy)
    capsys.readouterr()
    assert main(["model", "list"]) == EXIT_OK
    assert "folder-train MAE" in capsys.readouterr().out.split("3 images")[0]
    assert list(Path.cwd().iterdir()) == []  # item 16: no CSV in the current folder
    assert (copy / "eval-folder-train.csv").is_file()


def test_csv_goes_where_csv_says(shipped: Path, tmp_path: Path) -> None:
    crowd = tiny_crowd(tmp_path / "crowd", images=2, labeled=2)
    mine = tmp_path / "results" / "mine.csv"
    args = ["evaluate", "--dataset", "folder", "--root", str(crowd), "--split", "train"]
    assert main([*args, "--device", "cpu", "--csv", str(mine)]) == EXIT_OK
    assert mine.is_file() and list(Path.cwd().iterdir()) == []
    assert not (shipped.parent / DEFAULT_MODEL / "eval-folder-train.csv").exists()


def test_dataset_folder_from_environment_or_config_file(
    shipped: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    args = ["evaluate", "--dataset", "shb", "--device", "cpu", "--json"]
    with caplog.at_level(logging.ERROR):
        assert main(args) == EXIT_ERROR
    assert "--root" in caplog.text and "XMASK_DATA" in caplog.text
    assert "no-config.json" in caplog.text  # names the config file it looked at

    fake_shanghaitech(tmp_path / "data" / "shanghaitech", "B", "test", {"IMG_1": 4, "IMG_2": 9})
    monkeypatch.setenv("XMASK_DATA", str(tmp_path / "data"))
    capsys.readouterr()
    assert main(args) == EXIT_OK
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 2 and report["root"] == str(tmp_path / "data" / "shanghaitech")

    monkeypatch.delenv("XMASK_DATA")
    elsewhere = tmp_path / "elsewhere"
    shutil.move(tmp_path / "data" / "shanghaitech", elsewhere)
    config = tmp_path / "no-config.json"
    config.write_text(json.dumps({"datasets": {"shb": str(elsewhere)}}))
    assert main(args) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["root"] == str(elsewhere)


def test_masks_are_scored_with_the_cards_segmentation(
    shipped: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--masks`` segments as ``xmask predict`` does: with the model card's constants of
    Eq. 11–12 (the shipped card's λ, τ_g and head-sized prior), not the library defaults."""
    from xmask.data.synthetic import make_crowd_folder
    from xmask.evaluation import run
    from xmask.segment.instances import INFERENCE

    crowd = tmp_path / "crowd"
    make_crowd_folder(crowd, 2, height=80, width=96, n_heads=(4, 9), masks=True)
    used = []
    score = run.score_segmentation
    monkeypatch.setattr(
        run, "score_segmentation", lambda p, *a: used.append(p.segment_config) or score(p, *a)
    )
    args = ["evaluate", "--dataset", "folder", "--root", str(crowd), "--split", "train"]
    assert main([*args, "--device", "cpu", "--masks", str(crowd)]) == EXIT_OK
    card = read_model_card(shipped).segment
    assert used == [card] and card != INFERENCE
