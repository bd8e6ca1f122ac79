"""``Predictor``: inputs, count threshold, masks for every head, tiling, COCO and overlay."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from conftest import make_run, tiny_model
from xmask.data.render import DOT_COLOUR
from xmask.data.synthetic import make_crowd
from xmask.errors import UsageError, XmaskError
from xmask.geometry.points import pixel_of
from xmask.inference.calibration import resolve_count_rule
from xmask.inference.count_rule import CountRule
from xmask.inference.decode import inside_points
from xmask.inference.prediction import Prediction
from xmask.inference.predictor import Predictor
from xmask.inference.tiling import image_tensor, tiled_outputs
from xmask.models import XMaskModel
from xmask.types import Sample


@pytest.fixture(scope="module")
def model() -> XMaskModel:
    return tiny_model()


@pytest.fixture(scope="module")
def crowd() -> Sample:
    return make_crowd(70, 98, 14, seed=3)  # 98 px: the last column of cells is cut


def _check_every_head_has_its_mask(prediction: Prediction) -> None:
    assert prediction.labels is not None and prediction.areas is not None
    assert prediction.labels.dtype == np.int32 and prediction.labels.shape == prediction.size
    n = len(prediction.points)
    assert (prediction.areas > 0).all()
    np.testing.assert_array_equal(
        np.bincount(prediction.labels.ravel(), minlength=n + 1)[1:], prediction.areas
    )
    cols, rows = pixel_of(prediction.points, prediction.size).T
    np.testing.assert_array_equal(prediction.labels[rows, cols], np.arange(1, n + 1))


def test_array_pil_and_path_give_the_same_prediction(
    model: XMaskModel, crowd: Sample, tmp_path: Path
) -> None:
    path = tmp_path / "crowd.png"
    Image.fromarray(crowd.image).save(path)
    predictor = Predictor(model, "cpu")
    results = [predictor(crowd.image), predictor(Image.fromarray(crowd.image)), predictor(path)]
    first = results[0]
    assert first.count == len(first.points) > 0 and first.size == (70, 98)
    assert first.points.dtype == np.float32 and first.scores.shape == (first.count,)
    assert (first.points[:, 0] <= 98).all() and (first.points[:, 1] <= 70).all()
    assert first.network_s > 0 and first.post_s > 0 and first.tiles == 1
    _check_every_head_has_its_mask(first)
    for other in results[1:]:
        np.testing.assert_array_equal(other.points, first.points)
        np.testing.assert_array_equal(other.labels, first.labels)
    with pytest.raises(UsageError, match="H×W×3 uint8"):
        predictor(crowd.image[..., 0])


def test_count_threshold_is_respected(model: XMaskModel, crowd: Sample) -> None:
    with torch.inference_mode():
        logits = model(image_tensor(crowd.image, "cpu")).logits
    counts = []
    for threshold in (-0.5, 0.0, 0.3):
        prediction = Predictor(model, "cpu", count_threshold=threshold)(crowd.image)
        assert prediction.count == int((logits > threshold).sum())
        assert (prediction.scores > 1 / (1 + math.exp(-threshold)) - 1e-6).all()
        counts.append(prediction.count)
    assert counts[0] >= counts[1] >= counts[2]
    nothing = Predictor(model, "cpu", count_threshold=50.0)(crowd.image)
    assert nothing.count == 0 and nothing.points.shape == (0, 2)
    assert nothing.labels is not None and not nothing.labels.any()
    assert nothing.to_coco()["annotations"] == []


def test_without_mask_head_points_and_count_only(crowd: Sample) -> None:
    predictor = Predictor(tiny_model(mask_head=False), "cpu")
    prediction = predictor(crowd.image)
    assert not predictor.has_masks and prediction.labels is None and prediction.count > 0
    assert prediction.overlay().shape == (70, 98, 3)
    with pytest.raises(UsageError, match="no instance masks"):
        prediction.to_coco()
    with pytest.raises(UsageError, match="mask head"):
        predictor.segment_points(crowd.image, crowd.points)


def test_given_points_all_get_a_mask(model: XMaskModel, crowd: Sample) -> None:
    predictor = Predictor(model, "cpu")
    prediction = predictor.segment_points(crowd.image, crowd.points)
    np.testing.assert_array_equal(prediction.points, crowd.points)
    assert prediction.count == predictor(crowd.image).count  # the network's own count
    _check_every_head_has_its_mask(prediction)
    with pytest.raises(ValueError, match="outside the 98×70 image"):
        predictor.segment_points(crowd.image, crowd.points + np.float32(100.0))


def test_one_pass_equals_the_two_calls(model: XMaskModel, crowd: Sample) -> None:
    predictor = Predictor(model, "cpu")
    own, given = predictor.predict_and_segment_points(crowd.image, crowd.points)
    for got, expected in (
        (own, predictor(crowd.image)),
        (given, predictor.segment_points(crowd.image, crowd.points)),
    ):
        assert got.count == expected.count
        np.testing.assert_array_equal(got.points, expected.points)
        np.testing.assert_array_equal(got.scores, expected.scores)
        np.testing.assert_array_equal(got.labels, expected.labels)
    assert own.network_s == given.network_s


def test_set_image_runs_the_network_once_for_many_queries(model: XMaskModel, crowd: Sample) -> None:
    predictor = Predictor(model, "cpu")
    with pytest.raises(UsageError, match="set_image"):
        predictor.predict()
    calls = []
    predictor.model.register_forward_hook(lambda *_: calls.append(1))
    features = predictor.set_image(crowd.image)
    assert features.size == (70, 98) and features.tiles == 1 and len(calls) == 1
    own = predictor.predict()
    first = predictor.segment(crowd.points[:3])
    everyone = predictor.segment(crowd.points)
    assert len(calls) == 1  # three queries, one network pass
    assert own.count == first.count == everyone.count == len(own.points)
    assert len(first.points) == 3 and first.labels.max() == 3
    reference = predictor.segment_points(crowd.image, crowd.points)
    np.testing.assert_array_equal(everyone.labels, reference.labels)
    np.testing.assert_array_equal(own.labels, predictor(crowd.image).labels)


def test_coco_export_decodes_to_the_label_map(model: XMaskModel, crowd: Sample) -> None:
    prediction = Predictor(model, "cpu")(crowd.image)
    coco = prediction.to_coco(image_id=7, file_name="crowd.png")
    assert coco["images"] == [{"id": 7, "file_name": "crowd.png", "height": 70, "width": 98}]
    assert len(coco["annotations"]) == prediction.count
    assert prediction.labels is not None
    for k, annotation in enumerate(coco["annotations"], start=1):
        assert annotation["image_id"] == 7
        np.testing.assert_array_equal(
            mask_utils.decode(annotation["segmentation"]).astype(bool), prediction.labels == k
        )
        assert annotation["keypoints"][:2] == prediction.points[k - 1].tolist()


def test_overlay_colours_instances_and_dots_points(model: XMaskModel, crowd: Sample) -> None:
    prediction = Predictor(model, "cpu")(crowd.image)
    overlay = prediction.overlay(caption=False)
    assert overlay.shape == (70, 98, 3) and overlay.dtype == np.uint8
    cols, rows = pixel_of(prediction.points, prediction.size).T
    assert (overlay[rows, cols] == DOT_COLOUR).all()
    assert prediction.labels is not None
    background = prediction.labels == 0
    plain = prediction.overlay(dot_radius=0, caption=False)
    np.testing.assert_array_equal(plain[background], crowd.image[background])
    captioned = prediction.overlay(dot_radius=0)
    changed = (captioned != plain).any(axis=2)
    assert changed[:8, :20].any() and not changed[40:].any()  # a caption box in the corner


def test_points_of_border_cells_lie_inside_the_image() -> None:
    centres = np.array([[2.0, 2.0], [98.0, 70.0]], dtype=np.float32)
    np.testing.assert_array_equal(inside_points(centres, (69, 97)), [[2.0, 2.0], [96.5, 68.5]])


def test_tiles_and_bands_match_the_one_shot_paths(model: XMaskModel, crowd: Sample) -> None:
    image = image_tensor(crowd.image, "cpu")
    with torch.inference_mode():
        out, tiles = tiled_outputs(model, image, tile=32, overlap=16)
        whole = model(image)
    assert tiles > 1 and out.embedding is not None and whole.embedding is not None
    assert out.logits.shape == whole.logits.shape
    assert out.embedding.shape == whole.embedding.shape
    reference = out.logits
    tiled = Predictor(model, "cpu", max_pixels=1000, tile=32, overlap=16)
    prediction = tiled(crowd.image)
    assert prediction.tiles == tiles and prediction.count == int((reference > 0).sum())
    _check_every_head_has_its_mask(prediction)


def test_load_reads_the_stored_threshold_of_a_run(
    tmp_path: Path, model: XMaskModel, crowd: Sample
) -> None:
    run = make_run(tmp_path, threshold=0.25)
    predictor = Predictor.load(run, device="cpu")
    assert predictor.count_rule == CountRule(0.25) and predictor.has_masks
    assert resolve_count_rule(-1.0, run, "teacher") == CountRule(-1.0)
    with pytest.raises(XmaskError, match="--threshold"):
        resolve_count_rule("many", run, "teacher")
    reference = Predictor(model, "cpu", count_threshold=0.25)(crowd.image)  # the same weights
    np.testing.assert_array_equal(predictor(crowd.image).labels, reference.labels)


def test_two_regime_rule_counts_each_image_at_its_threshold(
    model: XMaskModel, crowd: Sample
) -> None:
    with torch.inference_mode():
        logits = model(image_tensor(crowd.image, "cpu")).logits
    pixels = crowd.image.shape[0] * crowd.image.shape[1]
    sparse = int((logits > 0.0).sum())
    density = sparse * 10_000 / pixels
    below = Predictor(model, "cpu", CountRule(0.0, density + 0.01, 0.3))(crowd.image)
    above = Predictor(model, "cpu", CountRule(0.0, density - 0.01, 0.3))(crowd.image)
    assert below.count == sparse
    assert above.count == int((logits > 0.3).sum()) < sparse
