"""Segmentation scoring against reference label maps, with a stand-in predictor."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xmask.data.readers import open_dataset
from xmask.data.synthetic import make_crowd_folder
from xmask.evaluation.scoring import score_segmentation


@dataclass
class _Prediction:
    labels: np.ndarray


class _Echo:
    """Returns the reference map itself (``perfect``) or an empty map."""

    def __init__(self, root: Path, perfect: bool) -> None:
        self.root, self.perfect, self.calls = root, perfect, 0

    def _labels(self, image: np.ndarray) -> np.ndarray:
        from xmask.data.image_io import load_label_map

        self.calls += 1
        name = f"syn_{self.calls - 1:04d}.png"
        labels = load_label_map(self.root / "masks" / name)
        assert labels.shape == image.shape[:2]
        return labels if self.perfect else np.zeros_like(labels)

    def predict_and_segment_points(
        self, image: np.ndarray, points: np.ndarray
    ) -> tuple[_Prediction, _Prediction]:
        labels = self._labels(image)
        return _Prediction(labels), _Prediction(labels)


def test_perfect_and_empty_masks(tmp_path: Path) -> None:
    make_crowd_folder(tmp_path, 3, height=48, width=64, n_heads=(3, 9))
    (tmp_path / "masks" / "syn_0002.png").unlink()  # no reference: skipped and listed
    dataset = open_dataset("folder", tmp_path, "train")
    heads = sum(len(dataset[i].points) for i in range(2))
    perfect = score_segmentation(_Echo(tmp_path, True), dataset, tmp_path, progress=False)  # type: ignore[arg-type]
    assert perfect.images == 2 and [s["name"] for s in perfect.skipped] == ["syn_0002.png"]
    for counts in (perfect.predicted, perfect.given):
        assert counts.mean_iou == 1.0 and counts.f1 == 1.0 and counts.gt_instances == heads
    empty = score_segmentation(_Echo(tmp_path, False), dataset, tmp_path, progress=False)  # type: ignore[arg-type]
    assert empty.given.mean_iou == 0.0 and empty.given.recall == 0.0
    assert set(empty.to_dict()) == {"images", "predicted", "given", "seconds", "skipped"}
