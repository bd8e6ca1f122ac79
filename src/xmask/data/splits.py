"""Labeled / unlabeled splits of a training set.

The standard labeled lists of the semi-supervised crowd counting literature ship with xmask
(``sha``, ``shb``, ``ucf``, ``jhu`` × 5 / 10 / 40 %: 15 / 30 / 120 images of ShanghaiTech A,
20 / 40 / 160 of B). A split is named ``DATASET-PERCENT`` (``sha-40``) or given as a path to a
text file with one image file name per line; the rest of the training set is the unlabeled pool.
``all`` labels every training image. ``shanghaitech-val`` is a held-out validation list of the
ShanghaiTech A+B folder (``sha_``/``shb_`` prefixed names; 24 A and 36 B training images).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from xmask.errors import DataError

log = logging.getLogger(__name__)


def standard_splits() -> list[str]:
    """Names of the shipped labeled lists, e.g. ``["jhu-10", ..., "ucf-5"]``."""
    folder = resources.files("xmask.data") / "splits"
    return sorted(p.name[: -len(".txt")] for p in folder.iterdir() if p.name.endswith(".txt"))


def parse_name_list(text: str, source: str | Path) -> list[str]:
    """Image names from a list file's text: one per line, blank lines and ``#`` comments skipped.

    Raises:
        DataError: the list is empty or names an image twice.
    """
    names = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    names = [name for name in names if name]
    if not names:
        raise DataError(source, "the list names no image")
    repeated = [name for name, count in Counter(names).items() if count > 1]
    if repeated:
        raise DataError(source, f"image(s) listed twice: {', '.join(repeated[:5])}")
    return names


def read_labeled_list(spec: str | Path) -> list[str]:
    """The labeled image names of a standard split name (``sha-40``) or a list file path.

    Raises:
        DataError: unknown split name, missing or invalid list file.
    """
    text_spec = str(spec)
    if text_spec in standard_splits():
        resource = resources.files("xmask.data") / "splits" / f"{text_spec}.txt"
        return parse_name_list(resource.read_text(encoding="utf-8"), f"split {text_spec}")
    path = Path(spec).expanduser()
    if not path.is_file():
        known = ", ".join(standard_splits())
        raise DataError(path, f"neither a split list file nor a standard split ({known})")
    return parse_name_list(path.read_text(encoding="utf-8"), path)


@dataclass(frozen=True)
class SemiSplit:
    """Indices of a training set divided into labeled and unlabeled images.

    Attributes:
        labeled: dataset indices of the labeled images, in list order.
        unlabeled: all other indices, in dataset order.
    """

    labeled: list[int]
    unlabeled: list[int]


ALL = "all"
"""The labeled list that labels every training image (fully supervised labels)."""


def semi_split(names: list[str], spec: str | Path) -> SemiSplit:
    """Divide a training set (its image ``names``, in order) by a labeled list, or label every
    image (``spec`` :data:`ALL`).

    Raises:
        DataError: the list names images that the training set lacks.
    """
    labeled_names = list(names) if str(spec) == ALL else read_labeled_list(spec)
    index = {name: i for i, name in enumerate(names)}
    missing = [name for name in labeled_names if name not in index]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise DataError(spec, f"{len(missing)} labeled image(s) not in the training set: {shown}")
    labeled = [index[name] for name in labeled_names]
    chosen = set(labeled)
    unlabeled = [i for i in range(len(names)) if i not in chosen]
    log.info("labeled split %s: %d labeled, %d unlabeled", spec, len(labeled), len(unlabeled))
    return SemiSplit(labeled=labeled, unlabeled=unlabeled)
