"""The ``xmask`` command line: one entry point, one small module per sub-command."""

from __future__ import annotations

import argparse
import contextlib
import difflib
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from typing import NoReturn

from xmask import __version__
from xmask.errors import XmaskError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_SKIPPED = 3
"""Exit code of a batch command that finished but skipped at least one bad item."""
EXIT_INTERRUPTED = 130
"""Exit code after Ctrl-C (128 + SIGINT)."""


def plural(count: int, noun: str) -> str:
    """``"1 image"``, ``"2 images"``, ``"1,234 heads"``."""
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


class XmaskParser(argparse.ArgumentParser):
    """An argument parser whose "unrecognized arguments" error suggests the nearest option of
    the (sub-)command being parsed."""

    active: argparse.ArgumentParser | None = None
    """The innermost parser of the current command line (set as parsing goes down)."""

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[no-untyped-def]
        XmaskParser.active = self
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        unknown = message.partition("unrecognized arguments: ")[2].split()
        options = [o for a in (XmaskParser.active or self)._actions for o in a.option_strings]
        hints = []
        for word in (w.split("=")[0] for w in unknown if w.startswith("-")):
            close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
            hints += [f"{word}: did you mean {close[0]}?"] if close else []
        super().error("; ".join([message, *hints]))


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, one sub-parser per sub-command."""
    from xmask.cli import (
        annotate,
        bench,
        calibrate,
        data,
        evaluate,
        model,
        predict,
        serve,
        train,
    )

    parser = XmaskParser(
        prog="xmask",
        description="Crowd counts, head points and one mask per person from head-point labels.",
    )
    parser.add_argument("--version", action="version", version=f"xmask {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    annotate.add_parser(sub)
    bench.add_parser(sub)
    calibrate.add_parser(sub)
    data.add_parser(sub)
    evaluate.add_parser(sub)
    model.add_parser(sub)
    predict.add_parser(sub)
    serve.add_parser(sub)
    train.add_parser(sub)
    return parser


PASSIVE_WAIT = ("OMP_WAIT_POLICY", "PASSIVE")
"""Set for the process unless the user set it: OpenMP threads that have no work sleep instead
of spinning. Measured on 2 cores (EfficientNet-Lite0, 8 crops of 256², forward + backward): one
2-thread process 0.53 s/step spinning, 0.54 passive; two at once 4.2 s/step each spinning,
0.93 passive. So a training, an evaluation or a test run can share the machine."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    if "torch" not in sys.modules:
        os.environ.setdefault(*PASSIVE_WAIT)
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        with image_limit(getattr(args, "max_image_pixels", None)):
            code = int(args.run(args))
            sys.stdout.flush()
            return code
    except XmaskError as err:
        logging.getLogger("xmask").error("%s", err)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(
            f"\nxmask {args.command}: interrupted; what is finished is kept: run the same "
            "command again to resume (training: with --resume)",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader left (`xmask model info | head`): end quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK


@contextlib.contextmanager
def image_limit(pixels: int | None) -> Iterator[None]:
    """``--max-image-pixels`` for the duration of one command (the process's limit is restored
    after it, for callers of :func:`main` in Python)."""
    if pixels is None:
        yield
        return
    from xmask.data.image_io import max_image_pixels, set_max_image_pixels

    previous = max_image_pixels()
    try:
        set_max_image_pixels(pixels)
    except ValueError as err:
        raise XmaskError(f"--max-image-pixels: {err}") from err
    try:
        yield
    finally:
        set_max_image_pixels(previous)
