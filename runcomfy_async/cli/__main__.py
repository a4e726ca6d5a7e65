"""``python -m runcomfy_async.cli``: the same as the ``runcomfy`` console script."""

from . import main

main()
