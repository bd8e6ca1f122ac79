"""Options people expect (issue 27): ``--conf`` as a probability (item 12), output toggles
(item 13), and the rough edges of the command line (item 17)."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_run
from xmask.cli import EXIT_ERROR, EXIT_OK, main
from xmask.data.image_io import load_label_map
from xmask.data.synthetic import make_crowd_folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("options")
    make_crowd_folder(root / "images", 2, height=64, width=90, n_heads=(5, 12), masks=False)
    make_run(root)
    return root


def _predict(root: Path, *args: str) -> int:
    return main(["predict", str(root / "images"), "--model", str(root / "run"), "--device",
                 "cpu", *args])  # fmt: skip


def _records(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "predictions").glob("*.json"))]


def test_conf_is_a_probability_beside_the_logit_threshold(setup: Path) -> None:
    assert _predict(setup, "--out", str(setup / "conf"), "--conf", "0.6") == EXIT_OK
    logit = str(math.log(0.6 / 0.4))
    assert _predict(setup, "--out", str(setup / "logit"), "--threshold", logit) == EXIT_OK
    by_conf, by_logit = _records(setup / "conf"), _records(setup / "logit")
    assert [r["count"] for r in by_conf] == [r["count"] for r in by_logit]
    assert all(s > 0.6 for r in by_conf for s in r["scores"])
    for bad in (["--conf", "1.5"], ["--conf", "0"], ["--conf", "0.5", "--threshold", "0"]):
        with pytest.raises(SystemExit):
            _predict(setup, "--out", str(setup / "bad"), *bad)


def test_output_toggles(setup: Path) -> None:
    out = setup / "toggles"
    assert _predict(setup, "--out", str(out), "--no-overlay", "--no-masks") == EXIT_OK
    assert not (out / "overlays").exists() and not (out / "masks").exists()
    assert not (out / "annotations.json").exists()
    assert all(r["areas"] is not None for r in _records(out))  # still segmented, not saved
    assert _predict(setup, "--out", str(out), "--overlay-format", "png", "--mask-preview") == 0
    png = out / "overlays" / "syn_0000.png"
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size == (90, 64)
    labels = load_label_map(out / "masks" / "syn_0000.png")
    preview = np.asarray(Image.open(out / "previews" / "syn_0000.png"))
    assert preview.shape == (64, 90, 3) and preview.dtype == np.uint8
    assert (preview[labels > 0].max(axis=1) > 0).all() and not preview[labels == 0].any()
    assert (out / "annotations.json").is_file()
    assert _predict(setup, "--out", str(out)) == EXIT_OK  # back to the defaults: redone
    assert not png.exists() and (out / "overlays" / "syn_0000.jpg").is_file()
    assert not (out / "previews" / "syn_0000.png").exists()


def test_out_that_is_a_file_fails_before_any_work(
    setup: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Item 17: checked before the model is even loaded (this model does not exist)."""
    taken = setup / "taken.txt"
    taken.write_text("mine")
    args = [str(setup / "images"), "--out", str(taken), "--model", "no-such-model"]
    assert main(["predict", *args]) == EXIT_ERROR
    assert "not a folder" in caplog.text and "no-such-model" not in caplog.text
    annotate = ["annotate", "--dataset", "folder", "--root", str(setup / "images"), "--out"]
    assert main([*annotate, str(taken)]) == EXIT_ERROR
    assert taken.read_text() == "mine"


def test_ctrl_c_is_one_line_with_the_resume_hint(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import xmask.cli.model

    def interrupted(args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(xmask.cli.model, "run_list", interrupted)
    assert main(["model", "list"]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "again" in err and len(err.strip().splitlines()) == 1


def test_a_mistyped_option_suggests_the_right_one(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["predict", "x.jpg", "--thresold", "1"])
    assert "--threshold" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", "--recrod"])
    assert "--record" in capsys.readouterr().err


def test_a_bad_device_is_one_line(caplog: pytest.LogCaptureFixture) -> None:
    assert main(["evaluate", "--device", "gpu"]) == EXIT_ERROR
    assert "gpu" in caplog.text and len(caplog.text.strip().splitlines()) == 1
    assert "cpu" in caplog.text and "xla" not in caplog.text


def test_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-m", "xmask", "model", "info"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    assert child.stdout is not None and child.stderr is not None
    child.stdout.close()  # like `| head` exiting before xmask writes
    err = child.stderr.read().decode()
    child.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipe" not in err


def test_verbose_loading_does_not_claim_random_weights(
    setup: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = setup / "verbose"
    assert _predict(setup, "--out", str(out)) == EXIT_OK
    with caplog.at_level(logging.DEBUG):
        assert main(["-v", "predict", str(setup / "images"), "--out", str(out), "--model",
                     str(setup / "run"), "--device", "cpu"]) == EXIT_OK  # fmt: skip
    assert "random init" not in caplog.text


def test_a_tiny_image_keeps_most_of_its_picture() -> None:
    from xmask.data.render import draw_annotations

    for h, w in ((24, 32), (40, 120), (12, 12)):
        image = np.full((h, w, 3), 128, dtype=np.uint8)
        drawn = draw_annotations(image, None, "1,234 heads")
        assert (drawn != image).any(axis=2).mean() < 0.35


def test_summary_line_counts_in_words(setup: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = str(setup / "images" / "syn_0000.png")
    args = ["predict", image, "--out", str(setup / "one"), "--model", str(setup / "run")]
    assert main([*args, "--device", "cpu"]) == EXIT_OK
    line = capsys.readouterr().out
    assert "1 image predicted by torch (" in line and "1 images" not in line  # a run: torch
    assert "video" not in line
