"""Options people expect (issue 27): ``--conf`` as a probability (item 12), output toggles
(item 13), and the rough edges of the command line (item 17)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_run
from xmask.cli import EXIT_OK, main
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
    assert _predict(setup, "--out", str(out), "--overlay-format", "jpg", "--mask-preview") == 0
    jpg = out / "overlays" / "syn_0000.jpg"
    with Image.open(jpg) as image:
        assert image.format == "JPEG" and image.size == (90, 64)
    labels = load_label_map(out / "masks" / "syn_0000.png")
    preview = np.asarray(Image.open(out / "previews" / "syn_0000.png"))
    assert preview.shape == (64, 90, 3) and preview.dtype == np.uint8
    assert (preview[labels > 0].max(axis=1) > 0).all() and not preview[labels == 0].any()
    assert (out / "annotations.json").is_file()
    assert _predict(setup, "--out", str(out)) == EXIT_OK  # back to the defaults: redone
    assert not jpg.exists() and (out / "overlays" / "syn_0000.png").is_file()
    assert not (out / "previews" / "syn_0000.png").exists()
