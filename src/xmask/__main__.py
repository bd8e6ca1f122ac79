"""``python -m xmask``: the same entry point as the ``xmask`` console script."""

import sys

from xmask.cli import main

if __name__ == "__main__":
    sys.exit(main())
