"""The distribution's own name and the install hints (issue 27, items 9 and 10), and the lazy
top-level API (item 11)."""

from __future__ import annotations

import builtins
import re
import subprocess
import sys
from pathlib import Path

import pytest

import xmask
from xmask.errors import MissingDependencyError

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = (REPO / "pyproject.toml").read_text(encoding="utf-8")
README = (REPO / "README.md").read_text(encoding="utf-8")


def test_the_distribution_has_a_free_name_and_every_hint_uses_it() -> None:
    name = re.search(r'^name = "([^"]+)"', PYPROJECT, re.M)
    assert name is not None and name.group(1) == xmask.DISTRIBUTION == "xmask-crowd"
    assert re.search(r'^xmask = "xmask.cli:main"', PYPROJECT, re.M)  # the command keeps its name
    taken = re.compile(r"""pip install ['"]?xmask\[""")
    for path in [
        *sorted((REPO / "src").rglob("*.py")),
        REPO / "README.md",
        *(REPO / "docs").glob("*.md"),
    ]:
        text = path.read_text(encoding="utf-8")
        assert not taken.search(text), f"{path}: an install hint names the taken 'xmask'"


def test_a_missing_extra_names_the_distribution(monkeypatch: pytest.MonkeyPatch) -> None:
    from xmask.apps.frames import import_av as _import_av

    real = builtins.__import__

    def no_av(name: str, *args: object, **kwargs: object) -> object:
        if name == "av":
            raise ImportError("No module named 'av'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_av)
    with pytest.raises(MissingDependencyError, match=r"pip install 'xmask-crowd\[video\]'"):
        _import_av()


def test_readme_says_how_to_install_cpu_torch_and_what_each_extra_is_for() -> None:
    install = README.split("## Install", 1)[1].split("\n## ", 1)[0]
    cpu = install.index(
        "pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu"
    )
    assert cpu < install.index("\npip install .\n")  # CPU wheels first, then the project
    assert "xmask-crowd" in install
    section = PYPROJECT.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    extras = re.findall(r"^(\w+) = \[", section, re.M)
    assert set(extras) == {"sam", "fastsam", "lite1", "lite2", "video", "onnx", "dev"}
    for extra in extras:
        assert re.search(rf"`{extra}`[^\n]*:", install), (
            f"README does not say what [{extra}] is for"
        )


def test_the_top_level_package_exposes_the_api_lazily() -> None:
    code = (
        "import sys, xmask; assert 'torch' not in sys.modules, 'import xmask imported torch'; "
        "from xmask import Predictor, Prediction, load_model; "
        "assert 'torch' in sys.modules; "
        "from xmask.inference.predictor import Predictor as P; assert Predictor is P; "
        "assert {'Predictor', 'Prediction', 'load_model'} <= set(dir(xmask))"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    with pytest.raises(AttributeError, match="no_such_thing"):
        _ = xmask.no_such_thing
