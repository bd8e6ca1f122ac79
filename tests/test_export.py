"""``xmask data export``: datasets in the folder format, merged, resumed, EXIF-safe."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from xmask.cli import EXIT_OK, EXIT_SKIPPED, main
from xmask.data.export import export_folder
from xmask.data.readers import open_dataset
from xmask.data.synthetic import make_crowd_folder


def _export(root: Path, out: Path, prefix: str) -> int:
    args = ["data", "export", "--dataset", "folder", "--root", str(root), "--out", str(out)]
    return main([*args, "--prefix", prefix])


def test_two_datasets_merge_and_read_back(tmp_path: Path) -> None:
    make_crowd_folder(tmp_path / "a", 3, height=40, width=50, n_heads=(3, 6), masks=False)
    make_crowd_folder(tmp_path / "b", 2, height=30, width=60, n_heads=(2, 5), masks=False, seed=1)
    (tmp_path / "b" / "broken.png").write_bytes(b"not an image")
    (tmp_path / "b" / "broken.txt").write_text("1 1\n")
    out = tmp_path / "mix"
    assert _export(tmp_path / "a", out, "a_") == EXIT_OK
    assert _export(tmp_path / "b", out, "b_") == EXIT_SKIPPED
    merged = open_dataset("folder", out)
    assert len(merged) == 5 and merged.names[0] == "a_syn_0000.png"
    originals = {f"a_{s.name}": s for s in open_dataset("folder", tmp_path / "a")}
    b = open_dataset("folder", tmp_path / "b")
    b = b.subset([i for i, name in enumerate(b.names) if name != "broken.png"])
    originals |= {f"b_{s.name}": s for s in b}
    for sample in merged:
        source = originals[sample.name]
        np.testing.assert_array_equal(sample.image, source.image)
        np.testing.assert_allclose(sample.points, source.points, atol=0.005)
    before = (out / "a_syn_0001.txt").stat().st_mtime_ns
    assert _export(tmp_path / "a", out, "a_") == EXIT_OK
    assert (out / "a_syn_0001.txt").stat().st_mtime_ns == before


def test_exif_rotated_images_are_reencoded_for_readers_that_ignore_exif(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    pixels = np.zeros((20, 30, 3), np.uint8)
    pixels[:, :10] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° when displayed
    Image.fromarray(pixels).save(src / "tilted.jpg", exif=exif, quality=100)
    (src / "tilted.txt").write_text("5 5\n")
    dataset = open_dataset("folder", src)
    dataset.apply_exif = False  # as the ShanghaiTech readers: points on the stored pixels
    summary = export_folder(dataset, tmp_path / "out", progress=False)
    assert summary.reencoded == 1 and not (tmp_path / "out" / "tilted.jpg").exists()
    back = open_dataset("folder", tmp_path / "out")[0]
    assert back.name == "tilted.png" and back.size == (20, 30)
    np.testing.assert_array_equal(back.image, dataset[0].image)


def test_real_split_exports_exact_points(shanghaitech: Path, tmp_path: Path) -> None:
    dataset = open_dataset("shb", shanghaitech, "test").subset([0, 1])
    export_folder(dataset, tmp_path / "shb", prefix="shb_", progress=False)
    for original, copy in zip(dataset, open_dataset("folder", tmp_path / "shb"), strict=True):
        assert copy.name == f"shb_{original.name}"
        np.testing.assert_array_equal(copy.image, original.image)
        np.testing.assert_allclose(copy.points, original.points, atol=0.005)
    assert (tmp_path / "shb" / f"shb_{dataset.names[0]}").stat().st_nlink >= 1
