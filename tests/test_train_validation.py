"""Model selection on a held-out validation list (never the test set): the held-out images leave
the training pools, are evaluated every `eval_every` epochs, and the best teacher is kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xmask.data.synthetic import make_crowd_folder
from xmask.errors import XmaskError
from xmask.train.config import load_config
from xmask.train.run_folder import load_trained_model
from xmask.train.trainer import Trainer


def _config(root: Path, validation: str) -> list[str]:
    return [
        "data.dataset=folder",
        f"data.root={root}",
        f"data.labeled={root / 'labeled.txt'}",
        f"data.validation={root / validation}",
        "model.weights=null",
        "model.neck_channels=16",
        "model.head_channels=16",
        "augment.crop_size=64",
        "schedule.epochs=2",
        "schedule.eval_every=1",
        "schedule.batch_labeled=2",
        "schedule.batch_unlabeled=2",
        "teacher.warmup_epochs=1",
        f"out={root / 'runs'}",
        "name=val",
    ]


@pytest.fixture(scope="module")
def crowd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("val")
    make_crowd_folder(root, 6, height=64, width=80, n_heads=(4, 10), masks=False)
    (root / "labeled.txt").write_text("syn_0000.png\nsyn_0001.png\n")
    (root / "val.txt").write_text("syn_0004.png\nsyn_0005.png\n")
    (root / "bad-val.txt").write_text("syn_0001.png\n")
    return root


def test_validation_selects_best_teacher(crowd: Path) -> None:
    trainer = Trainer(load_config(None, _config(crowd, "val.txt")))
    assert trainer.validation.names == ["syn_0004.png", "syn_0005.png"]
    assert set(trainer.unlabeled) == {0, 1, 2, 3}
    trainer.fit()
    run = crowd / "runs" / "val"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert all("val_mae" in r for r in records)
    assert trainer.state.best == min(r["val_mae"] for r in records)
    model, cfg = load_trained_model(run / "best")
    assert cfg.name == "val" and not model.training


def test_validation_images_must_not_be_labeled(crowd: Path) -> None:
    with pytest.raises(XmaskError, match="also labeled"):
        Trainer(load_config(None, _config(crowd, "bad-val.txt")))
