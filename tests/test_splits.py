"""Labeled / unlabeled splits: shipped standard lists and user list files."""

from __future__ import annotations

from pathlib import Path

import pytest

from xmask.data.readers import open_dataset
from xmask.data.splits import read_labeled_list, semi_split, standard_splits
from xmask.errors import DataError

SIZES = {"sha": (15, 30, 120), "shb": (20, 40, 160), "ucf": (55, 109, 433), "jhu": (114, 228, 909)}


def test_every_standard_list_ships() -> None:
    semi = {f"{d}-{p}" for d in SIZES for p in (5, 10, 40)}
    assert set(standard_splits()) == semi | {"shanghaitech-val"}
    for dataset, sizes in SIZES.items():
        for percent, size in zip((5, 10, 40), sizes, strict=True):
            names = read_labeled_list(f"{dataset}-{percent}")
            assert len(names) == size == len(set(names))


def test_shanghaitech_validation_list() -> None:
    names = read_labeled_list("shanghaitech-val")
    assert len(names) == len(set(names)) == 60
    assert sum(n.startswith("sha_IMG_") for n in names) == 24
    assert sum(n.startswith("shb_IMG_") for n in names) == 36


def test_user_list_file(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("# my labeled images\nb.jpg\n\na.jpg  \n")
    assert read_labeled_list(tmp_path / "mine.txt") == ["b.jpg", "a.jpg"]
    split = semi_split(["a.jpg", "b.jpg", "c.jpg", "d.jpg"], tmp_path / "mine.txt")
    assert split.labeled == [1, 0] and split.unlabeled == [2, 3]


@pytest.mark.parametrize(
    ("content", "problem"), [("", "names no image"), ("a.jpg\na.jpg\n", "listed twice: a.jpg")]
)
def test_bad_list_files(tmp_path: Path, content: str, problem: str) -> None:
    (tmp_path / "l.txt").write_text(content)
    with pytest.raises(DataError, match=problem):
        read_labeled_list(tmp_path / "l.txt")


def test_unknown_spec_and_missing_images(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="neither a split list file nor a standard split"):
        read_labeled_list("sha-33")
    (tmp_path / "l.txt").write_text("a.jpg\nzz.jpg\n")
    with pytest.raises(DataError, match=r"1 labeled image.* not in the training set: zz\.jpg"):
        semi_split(["a.jpg", "b.jpg"], tmp_path / "l.txt")


@pytest.mark.parametrize("dataset", ["sha", "shb"])
def test_standard_splits_on_real_data(shanghaitech: Path, dataset: str) -> None:
    names = open_dataset(dataset, shanghaitech, "train").names
    for percent, size in zip((5, 10, 40), SIZES[dataset], strict=True):
        split = semi_split(names, f"{dataset}-{percent}")
        assert len(split.labeled) == size
        assert len(split.unlabeled) == len(names) - size
        assert not set(split.labeled) & set(split.unlabeled)
        labeled = open_dataset(dataset, shanghaitech, "train").subset(split.labeled)
        assert labeled.names == read_labeled_list(f"{dataset}-{percent}")


def test_all_labels_every_image() -> None:
    split = semi_split(["b.jpg", "a.jpg", "c.jpg"], "all")
    assert split.labeled == [0, 1, 2] and split.unlabeled == []
