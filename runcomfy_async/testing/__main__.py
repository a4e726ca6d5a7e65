"""``python -m runcomfy_async.testing``: serve the emulator until SIGINT/SIGTERM.

First prints the shell lines that point a client at it, one per line, e.g.
``eval "$(python -m runcomfy_async.testing | head -5)"`` in another shell. The options are
defined once, in :data:`runcomfy_async.testing._cli.OPTIONS`, and shared with ``runcomfy
emulator``; this entry point needs only the standard library's argparse (no click).
"""

from __future__ import annotations

import sys

from ._cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
