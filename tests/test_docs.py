"""The documentation agrees with the code: the CLI reference is the parser's own help."""

from __future__ import annotations

from pathlib import Path

from xmask.cli.reference import cli_reference

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_cli_reference_matches_the_parser() -> None:
    expected = cli_reference()
    assert (DOCS / "cli.md").read_text(encoding="utf-8") == expected, (
        "docs/cli.md is stale: python -m xmask.cli.reference > docs/cli.md"
    )
    assert "## `xmask predict`" in expected and "## `xmask model export`" in expected
