"""The command-line reference (``docs/cli.md``), generated from the parser itself, so the
page and ``--help`` cannot disagree (a test regenerates it and compares)::

    python -m xmask.cli.reference > docs/cli.md
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator

WIDTH = "100"
"""Terminal width the help is formatted for."""


def _commands(
    parser: argparse.ArgumentParser, prefix: str
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """``(command line, parser)`` of ``parser`` and of every sub-command below it, in
    registration order (aliases once)."""
    yield prefix, parser
    seen: set[int] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if id(sub) not in seen:
                    seen.add(id(sub))
                    yield from _commands(sub, f"{prefix} {name}")


def cli_reference() -> str:
    """The Markdown page: every command's ``--help`` text."""
    from xmask.cli import build_parser

    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        parts = [
            "# Command-line reference\n\n"
            "Generated from the parser (`python -m xmask.cli.reference > docs/cli.md`); the same "
            "text as `xmask COMMAND --help`.\n"
        ]
        for command, parser in _commands(build_parser(), "xmask"):
            parser.prog = command
            parts.append(f"\n## `{command}`\n\n```text\n{parser.format_help().rstrip()}\n```\n")
    finally:
        if previous is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = previous
    return "".join(parts)


if __name__ == "__main__":
    print(cli_reference(), end="")
