"""``python -m runcomfy_async.demo``: the same as ``runcomfy demo`` (arguments pass through)."""

import sys

from .cli import cli

if __name__ == "__main__":
    cli.main(args=["demo", *sys.argv[1:]], prog_name="runcomfy")
