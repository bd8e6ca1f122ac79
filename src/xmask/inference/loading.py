"""What a ``--model`` argument names, loaded for inference; and a training run exported as a model
folder (:mod:`xmask.inference.model_folder`).

A model argument is a registered name or a model folder (None: the shipped default), or a
training run: a run folder, its ``checkpoints/`` or ``best/``, or a ``.safetensors`` file in it.
Either way the result is an :class:`InferenceModel`: the network, its count rule and its
segmentation constants.

:func:`export_model` (``xmask model export``) writes a run as a model folder, or copies a model
folder as it is, and with ``onnx`` adds the network's ONNX graph beside the card.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xmask.data.readers import open_dataset
from xmask.data.splits import read_labeled_list, semi_split
from xmask.errors import UsageError, XmaskError
from xmask.inference.calibration import resolve_count_rule
from xmask.inference.checkpoint import checkpoint_state, latest_step
from xmask.inference.count_rule import CountRule
from xmask.inference.model_folder import (
    ModelCard,
    copy_model_folder,
    is_installed,
    is_model_folder,
    load_model_folder,
    read_model_card,
    resolve_model,
    sha256_of,
    write_model_folder,
)
from xmask.inference.onnx_backend import write_onnx
from xmask.inference.run_folder import (
    find_run_folder,
    load_run_model,
    read_run_info,
    weights_folder,
)
from xmask.inference.scale import ONE_PASS, ScaleRule
from xmask.segment.instances import INFERENCE, SegmentConfig

log = logging.getLogger(__name__)


@dataclass
class InferenceModel:
    """A network ready for inference and where it came from.

    Attributes:
        model: the network, eval mode, on its device.
        count_rule: which cells are heads (one logit threshold, or two by density).
        segment: constants of Eq. 11–12 at inference.
        scale: how the network input is sized (a model folder's rule; a run: one pass).
        source: the model folder or run path it was loaded from.
        card: the model folder's card (None for a run).
        dataset: ``(dataset, root, max_short_side)`` it was trained on, where known; a model
            folder's card names its dataset but no folder of the training machine (root ``""``).
    """

    model: nn.Module
    count_rule: CountRule
    segment: SegmentConfig
    scale: ScaleRule
    source: Path
    card: ModelCard | None
    dataset: tuple[str, str, int | None] | None


def load_inference_model(
    spec: str | Path | None,
    device: torch.device,
    which: str = "teacher",
    threshold: str | float = "auto",
) -> InferenceModel:
    """Load what a ``--model`` / ``--checkpoint`` argument names (module docstring).

    Args:
        which: the network of a run (``"teacher"`` or ``"student"``); a model folder has one.
        threshold: ``"auto"`` (the card's threshold, or the calibration stored for a run's
            weights, else 0) or a logit.

    Raises:
        CheckpointError: nothing loadable there.
        XmaskError: a bad threshold.
    """
    path = resolve_model(spec)
    if is_model_folder(path):
        model, card = load_model_folder(path, device)
        value = card.count_rule if threshold == "auto" else threshold
        rule = resolve_count_rule(value, path, which)
        training = card.training
        dataset = None
        if "dataset" in training:
            dataset = (str(training["dataset"]), "", training.get("max_short_side"))
        scale = card.scale or ONE_PASS
        return InferenceModel(model, rule, card.segment, scale, path, card, dataset)
    model, info = load_run_model(path, device, which=which)
    data = info.data
    return InferenceModel(
        model,
        resolve_count_rule(threshold, path, which),
        INFERENCE,
        ONE_PASS,
        path,
        None,
        (data.dataset, data.root, data.max_short_side),
    )


def weights_digest(source: str | Path) -> str:
    """SHA-256 of the weights a loaded model came from: a model folder's, as its card states
    (checked when it was loaded), or that of a run's weights file (the one given, else the
    latest checkpoint of its folder). Tells whether two predictions used the same weights."""
    path = Path(source)
    if is_model_folder(path):
        return str(read_model_card(path).weights["sha256"])
    if path.is_file():
        return sha256_of(path)
    folder = weights_folder(path)
    return sha256_of(folder / f"step-{latest_step(folder):08d}.safetensors")


def training_summary(run_path: Path, which: str) -> dict[str, Any]:
    """What ``model.json`` records about the training run behind ``run_path``: dataset name,
    resize rule, labeled list and its size (held-out validation images left out, as training
    leaves them), training images and label fraction (where the dataset is on this machine),
    the validation list, recipe(s), stage, network, step and training seconds. No path
    of the training machine is recorded."""
    run = find_run_folder(run_path)
    info = read_run_info(run)
    state = checkpoint_state(weights_folder(Path(run_path)))
    summary: dict[str, Any] = {
        "dataset": info.data.dataset,
        "max_short_side": info.data.max_short_side,
        "labeled": _name_only(info.data.labeled),
        "unlabeled_pool": info.data.unlabeled_pool,
    }
    if info.data.validation:
        summary["validation"] = _name_only(info.data.validation)
    try:
        names = open_dataset(info.data.dataset, info.data.root, "train").names
        held_out = set(read_labeled_list(info.data.validation)) if info.data.validation else set()
        labeled = semi_split(names, info.data.labeled).labeled
        labeled = [i for i in labeled if names[i] not in held_out]  # as the trainer leaves them
        summary |= {
            "labeled_images": len(labeled),
            "train_images": len(names),
            "label_fraction": round(len(labeled) / len(names), 4),
        }
        if held_out:
            summary["validation_images"] = sum(name in held_out for name in names)
    except XmaskError as err:
        log.warning("labeled images not recorded: %s", err)
    command = run.root.parent / "pipeline-command.json"
    recipes = json.loads(command.read_text("utf-8"))["recipes"] if command.is_file() else []
    return summary | {
        "recipes": [_name_only(recipe) for recipe in recipes] or [info.name],
        "stage": info.stage,
        "network": which,
        "step": int(state["step"]),
        "seconds": round(float(state.get("seconds", 0.0)), 1),
    }


def _name_only(spec: str) -> str:
    """A split or recipe as a card records it: a shipped name as it is, a file by its name only
    (a card holds no path of the training machine)."""
    return Path(spec).name if ("/" in spec or "\\" in spec) else spec


def export_run(
    run_path: str | Path,
    out: str | Path,
    name: str | None = None,
    description: str = "",
    which: str = "teacher",
    dtype: str = "float32",
    scale: ScaleRule | None = None,
    segment: SegmentConfig = INFERENCE,
) -> Path:
    """Write the ``which`` network of a training run as a model folder, with the count
    threshold calibrated for it (else 0) and :func:`training_summary`.

    Args:
        run_path: a run folder, its ``checkpoints/`` or ``best/``, or a weights file in it.
        out: the model folder to write.
        name: the model's name (default: ``out``'s folder name).
        scale: the card's :class:`~xmask.inference.scale.ScaleRule` (default: the adaptive
            rule, :class:`ScaleRule` ``()``).
        segment: the card's segmentation constants (default: :data:`INFERENCE`).

    Raises:
        CheckpointError: not a loadable run.
    """
    run_path, out = Path(run_path).expanduser(), Path(out).expanduser()
    model, info = load_run_model(run_path, "cpu", which=which)
    card = ModelCard(
        name=name or out.name,
        architecture=dataclasses.replace(info.model, weights=None),
        **ModelCard.rule_fields(resolve_count_rule("auto", run_path, which)),
        segment=segment,
        scale=ScaleRule() if scale is None else scale,
        description=description,
        training=training_summary(run_path, which),
    )
    return write_model_folder(out, model, card, dtype)


def export_model(
    source: str | Path, out: str | Path, onnx: bool = False, **run_options: Any
) -> Path:
    """``xmask model export``: a training run written as a model folder (:func:`export_run`
    with ``run_options``), or a model folder (a path or a registered name) copied to ``out``
    as it is (``out`` may be the folder itself, unless it is an installed model); then, with
    ``onnx``, its network as ``model.onnx`` beside the card
    (:func:`~xmask.inference.onnx_backend.write_onnx`).

    Args:
        run_options: :func:`export_run`'s options (``which`` is ignored for a model folder,
            which holds one network; the others are refused there).

    Raises:
        CheckpointError: neither a loadable run nor a model folder.
        UsageError: a run option for a model folder, or ``out`` an installed model.
        MissingDependencyError: ``onnx`` without the ``onnx`` package.
    """
    path, out = resolve_model(source), Path(out).expanduser()
    if not is_model_folder(path):
        folder = export_run(path, out, **run_options)
    else:
        refused = sorted(set(run_options) - {"which"})
        if refused:
            raise UsageError(
                f"{', '.join(refused)}: options of a training run, not of a model folder"
            )
        same = out.exists() and out.resolve() == path.resolve()
        if same and is_installed(out):
            raise UsageError(f"{out} is an installed model and is never changed: give another DEST")
        folder = out if same else copy_model_folder(path, out)
    if onnx:
        write_onnx(folder)
    return folder
