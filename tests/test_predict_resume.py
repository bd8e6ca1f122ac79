"""``xmask predict`` re-runs: a finished image is kept only while its source file and every
setting that changes its result are unchanged (issue 27, item 1); output names keep the
sub-folder that tells same-named images apart (item 4); names never collide into one output
(item 6)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from conftest import make_run
from xmask.cli import EXIT_ERROR, EXIT_OK, EXIT_SKIPPED, main
from xmask.data.synthetic import make_crowd_folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("resume")
    make_crowd_folder(root / "images", 3, height=64, width=90, n_heads=(5, 12), masks=False)
    make_crowd_folder(root / "other", 1, height=64, width=90, n_heads=(30, 30), masks=False, seed=9)
    make_run(root)
    make_run(root, mask_head=False)
    return root


def _predict(root: Path, *args: str, model: str = "run") -> int:
    return main(["predict", *args, "--model", str(root / model), "--device", "cpu"])


def _records(out: Path) -> dict[str, dict]:
    return {
        p.relative_to(out / "predictions").as_posix(): json.loads(p.read_text())
        for p in sorted((out / "predictions").rglob("*.json"))
    }


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def test_changed_settings_or_source_redo_the_image(setup: Path, tmp_path: Path) -> None:
    images = tmp_path / "images"
    shutil.copytree(setup / "images", images)
    out = tmp_path / "out"
    assert _predict(setup, str(images), "--out", str(out)) == EXIT_OK
    first = _records(out)
    heads = sum(r["count"] for r in first.values())
    assert heads > 0

    assert _predict(setup, str(images), "--out", str(out)) == EXIT_OK  # nothing changed
    summary = _summary(out)
    assert summary["already_done"] == 3 and summary["predicted"] == 0
    assert summary["images"] == 3 and summary["heads"] == heads  # the folder, not the call

    assert _predict(setup, str(images), "--out", str(out), "--threshold", "50") == EXIT_OK
    assert all(r["count"] == 0 for r in _records(out).values())
    assert _summary(out)["predicted"] == 3 and _summary(out)["heads"] == 0

    assert _predict(setup, str(images), "--out", str(out), model="run-stage1") == EXIT_OK
    assert all(r["areas"] is None for r in _records(out).values())

    assert _predict(setup, str(images), "--out", str(out), "--roi", "0,0 45,0 45,64") == 0
    assert all("roi" in r for r in _records(out).values())
    assert _predict(setup, str(images), "--out", str(out)) == EXIT_OK
    assert _records(out).keys() == first.keys()
    assert all("roi" not in r for r in _records(out).values())
    assert _summary(out)["predicted"] == 3

    assert _predict(setup, str(images), "--out", str(out), "--locate", "1.5") == EXIT_OK
    assert _summary(out)["predicted"] == 3  # a locating pass: the heads move, redone
    assert {k: r["count"] for k, r in _records(out).items()} == {
        k: r["count"] for k, r in first.items()
    }  # the count stays the scale rule's
    assert _predict(setup, str(images), "--out", str(out), "--locate", "0") == EXIT_OK
    assert _summary(out)["predicted"] == 3
    assert _predict(setup, str(images), "--out", str(out)) == EXIT_OK
    assert _summary(out)["already_done"] == 3  # --locate 0 is the default here

    replaced = images / "syn_0001.png"
    shutil.copyfile(setup / "other" / "syn_0000.png", replaced)
    os.utime(replaced, ns=(1, 1))  # another photo under the old name, even with an old time
    assert _predict(setup, str(images), "--out", str(out)) == EXIT_OK
    assert _summary(out)["predicted"] == 1 and _summary(out)["already_done"] == 2
    assert _records(out)["syn_0001.json"]["count"] != first["syn_0001.json"]["count"]

    assert _predict(setup, str(images), "--out", str(out), "--force") == EXIT_OK
    assert _summary(out)["predicted"] == 3 and _summary(out)["already_done"] == 0


def test_subfolders_keep_their_names(setup: Path, tmp_path: Path, caplog) -> None:
    dcim = tmp_path / "DCIM"
    for folder in ("100", "101"):
        (dcim / folder).mkdir(parents=True)
    shutil.copyfile(setup / "images" / "syn_0000.png", dcim / "100" / "IMG_1.png")
    shutil.copyfile(setup / "other" / "syn_0000.png", dcim / "101" / "IMG_1.png")
    out = tmp_path / "out"
    assert _predict(setup, str(dcim), "--out", str(out)) == EXIT_ERROR
    assert "--recursive" in caplog.text
    assert _predict(setup, str(dcim), "--out", str(out), "--recursive") == EXIT_OK
    records = _records(out)
    assert sorted(records) == ["100/IMG_1.json", "101/IMG_1.json"]
    assert records["101/IMG_1.json"]["image"] == "101/IMG_1.png"
    assert (out / "masks" / "100" / "IMG_1.png").is_file()
    assert (out / "overlays" / "101" / "IMG_1.jpg").is_file()
    pattern = tmp_path / "glob"
    assert _predict(setup, str(dcim / "**" / "*.png"), "--out", str(pattern)) == EXIT_OK
    assert sorted(_records(pattern)) == ["100/IMG_1.json", "101/IMG_1.json"]
    coco = json.loads((out / "annotations.json").read_text())
    assert sorted(i["file_name"] for i in coco["images"]) == ["100/IMG_1.png", "101/IMG_1.png"]


def test_same_named_images_of_two_calls_never_mix(setup: Path, tmp_path: Path) -> None:
    for cam in ("cam1", "cam2"):
        (tmp_path / cam).mkdir()
    shutil.copyfile(setup / "images" / "syn_0000.png", tmp_path / "cam1" / "IMG_X.png")
    shutil.copyfile(setup / "other" / "syn_0000.png", tmp_path / "cam2" / "IMG_X.png")
    out = tmp_path / "out"
    assert _predict(setup, str(tmp_path / "cam1" / "IMG_X.png"), "--out", str(out)) == EXIT_OK
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and "summary" not in p.name}
    assert _predict(setup, str(tmp_path / "cam2" / "IMG_X.png"), "--out", str(out)) == EXIT_SKIPPED
    summary = _summary(out)
    assert "cam1" in summary["skipped"][0]["problem"]
    assert all(p.read_bytes() == data for p, data in before.items())  # nothing overwritten


def test_new_weights_at_the_same_path_redo_the_image(setup: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(setup / "run", run)
    out = tmp_path / "out"
    images = str(setup / "images")
    assert main(["predict", images, "--out", str(out), "--model", str(run)]) == EXIT_OK
    assert main(["predict", images, "--out", str(out), "--model", str(run)]) == EXIT_OK
    assert _summary(out)["already_done"] == 3
    weights = next((run / "checkpoints").glob("*.safetensors"))
    tensors = load_file(weights)
    save_file({k: v + 0.01 if v.is_floating_point() else v for k, v in tensors.items()}, weights)
    assert main(["predict", images, "--out", str(out), "--model", str(run)]) == EXIT_OK
    assert _summary(out)["predicted"] == 3 and _summary(out)["already_done"] == 0
