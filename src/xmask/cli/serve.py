"""``xmask serve``: an HTTP API and a web page over one model (:mod:`xmask.apps.serve_http`)."""

from __future__ import annotations

import argparse
import sys

from xmask.cli import EXIT_OK, image_limit
from xmask.cli._args import (
    BACKEND_CHOICES,
    BACKEND_HELP,
    MASK_GRID_HELP,
    MASK_GRIDS,
    add_device_option,
    add_model_options,
)

DEFAULT_UPLOAD_MB = 20
DEFAULT_PIXELS = 25_000_000
DEFAULT_TIMEOUT_S = 60.0
"""The defaults of :class:`xmask.apps.serve.ServeLimits`, spelled here so that parsing options
does not import torch (a test checks that they agree)."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``xmask serve``."""
    parser = sub.add_parser(
        "serve",
        help="an HTTP API and a web page: drop an image, see the count, masks and zones",
        description="Load a model once and answer HTTP requests: GET / is a page where an image "
        "dropped on it shows its count, its masks (on or off), a score slider and the count "
        "inside a zone drawn with clicks; POST /predict takes an image file's bytes as the "
        "body (Content-Type image/*; query: conf=P, floor=P, zone='x1,y1 x2,y2 x3,y3', "
        "masks=0|1) and answers JSON: count, points [x, y], scores, masks as COCO RLE; GET "
        '/health answers {"status": "ok", "model": ...}. Errors are JSON {"error": ...} '
        "(413 over the size limits, 400 not an image, 415 another content type, 503 busy or "
        "over --timeout). Requests use the model one at a time. Ctrl-C stops.",
    )
    add_model_options(parser)
    add_device_option(parser)
    parser.add_argument("--backend", choices=BACKEND_CHOICES, default="auto", help=BACKEND_HELP)
    parser.add_argument(
        "--mask-grid", type=int, choices=MASK_GRIDS, default=1, metavar="G", help=MASK_GRID_HELP
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to "
        "the network, with no authentication)",
    )
    parser.add_argument(
        "--port", type=int, default=8000, help="port to listen on (default 8000; 0: any free one)"
    )
    parser.add_argument(
        "--max-upload-mb",
        type=float,
        default=DEFAULT_UPLOAD_MB,
        metavar="MB",
        help=f"refuse uploads over MB mebibytes (413; default {DEFAULT_UPLOAD_MB})",
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_PIXELS,
        metavar="N",
        help=f"refuse images of more than N pixels, from their header (413; default "
        f"{DEFAULT_PIXELS:,})",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="S",
        help=f"answer 503 to a request not done within S seconds, waiting for the model "
        f"included (default {DEFAULT_TIMEOUT_S:g})",
    )
    parser.set_defaults(run=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    """``xmask serve``: bind, print the URL, serve until Ctrl-C."""
    from xmask.apps.serve import ServeLimits
    from xmask.apps.serve_http import ServeRequest, open_server
    from xmask.data.image_io import max_image_pixels
    from xmask.errors import UsageError

    try:
        limits = ServeLimits(round(args.max_upload_mb * 2**20), args.max_pixels, args.timeout)
    except ValueError as err:
        raise UsageError(f"--max-upload-mb, --max-pixels and --timeout: {err}") from err
    request = ServeRequest(
        model=args.model, which=args.which, threshold=args.threshold, scale=args.scale,
        device=args.device, backend=args.backend, mask_grid=args.mask_grid, host=args.host,
        port=args.port, limits=limits,
    )  # fmt: skip
    server = open_server(request)
    print(f"xmask serve: {server.url} (model {server.service.model}); Ctrl-C stops", flush=True)
    # Pillow's decompression-bomb limit must not refuse what --max-pixels allows
    with image_limit(max(args.max_pixels, max_image_pixels())):
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            print("\nxmask serve: stopped", file=sys.stderr)
        finally:
            server.server_close()
    return EXIT_OK
