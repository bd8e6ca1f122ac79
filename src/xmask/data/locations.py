"""Where a dataset lies on this machine, when a command is not told (``--root``).

In this order:

1. the folder given (``--root``, ``data.root``);
2. the folder a training run was trained on, when it exists on this machine;
3. the config file's ``datasets`` entry: ``$XMASK_CONFIG``, default
   ``~/.config/xmask/config.json`` (``$XDG_CONFIG_HOME/xmask/config.json``), a JSON object such
   as ``{"datasets": {"sha": "/data/shanghaitech", "shb": "/data/shanghaitech"}}``;
4. ``$XMASK_DATA/FOLDER``, where ``$XMASK_DATA`` holds the datasets under their usual folder
   names (:data:`DATA_FOLDERS`: ``shanghaitech`` for ``sha`` and ``shb``, ``ucf-qnrf``,
   ``jhu-crowd``).

A model card never names a folder (it holds no path of the training machine).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from xmask.errors import DataError, UsageError

DATA_ENV = "XMASK_DATA"
"""A folder holding the datasets under the names of :data:`DATA_FOLDERS`."""

CONFIG_ENV = "XMASK_CONFIG"
"""The config file, instead of ``~/.config/xmask/config.json``."""

DATA_FOLDERS = {"sha": "shanghaitech", "shb": "shanghaitech", "ucf": "ucf-qnrf", "jhu": "jhu-crowd"}
"""Dataset key → its folder's name under ``$XMASK_DATA``."""


def config_path() -> Path:
    """``$XMASK_CONFIG``, else ``$XDG_CONFIG_HOME/xmask/config.json`` (``~/.config``)."""
    configured = os.environ.get(CONFIG_ENV)
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "xmask" / "config.json"


def configured_roots() -> dict[str, str]:
    """The config file's ``datasets`` (key → folder); empty without a config file.

    Raises:
        DataError: a config file that is not a JSON object with a ``datasets`` object of
            strings.
    """
    path = config_path()
    if not path.is_file():
        return {}
    try:
        content = json.loads(path.read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise DataError(path, f"not a JSON config file ({err})") from err
    roots = content.get("datasets", {}) if isinstance(content, dict) else None
    if not isinstance(roots, dict) or not all(isinstance(v, str) for v in roots.values()):
        raise DataError(path, 'expected {"datasets": {"KEY": "FOLDER", ...}}')
    return {str(key).lower(): value for key, value in roots.items()}


def dataset_root(key: str, given: str | Path | None = None, trained: str | None = None) -> Path:
    """The folder of dataset ``key`` (module docstring for the order).

    Args:
        key: a dataset key (``sha``, ``shb``, ``ucf``, ``jhu``, ``folder``).
        given: the folder the user gave, or None.
        trained: the folder a training run names, used when it exists here.

    Raises:
        UsageError: no folder given or configured, naming every place looked at.
    """
    if given is not None and str(given) != "":
        return Path(given).expanduser()
    if trained and Path(trained).expanduser().is_dir():
        return Path(trained).expanduser()
    configured = configured_roots().get(key)
    if configured:
        return Path(configured).expanduser()
    data = os.environ.get(DATA_ENV)
    folder = DATA_FOLDERS.get(key)
    if data and folder and (Path(data).expanduser() / folder).is_dir():
        return Path(data).expanduser() / folder
    places = [f'a "datasets": {{"{key}": FOLDER}} entry in {config_path()}']
    if folder:
        places.append(f"${DATA_ENV}/{folder} (${DATA_ENV}: a folder holding the datasets)")
    missing = f" (the run's {trained} is not on this machine)" if trained else ""
    raise UsageError(
        f"where is the {key} dataset{missing}? give --root FOLDER, or set " + " or ".join(places)
    )
