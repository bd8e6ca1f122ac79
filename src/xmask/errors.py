"""Exceptions raised by xmask; every message names the file and the problem."""

from __future__ import annotations

from pathlib import Path

from xmask import DISTRIBUTION


class XmaskError(Exception):
    """Base class of the errors xmask raises on purpose."""


class DataError(XmaskError):
    """A data file (image, point file, label map, split list) is missing or unusable.

    Attributes:
        path: the offending file.
        problem: what is wrong with it, in words.
    """

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class UsageError(XmaskError, ValueError):
    """An argument names something that does not exist (a dataset, a split, a backbone)."""


class MissingDependencyError(UsageError):
    """An optional dependency (an extra of the distribution) is not installed.

    Attributes:
        extra: the extra that brings it (``video``, ``sam``, ``fastsam``, ``lite2``).
    """

    def __init__(self, what: str, extra: str) -> None:
        self.extra = extra
        super().__init__(f"{what}: pip install '{DISTRIBUTION}[{extra}]'")
