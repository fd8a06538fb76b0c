"""``python -m coi_watch.cli``: the same as the ``coi-watch`` console script."""

from coi_watch.cli.main import main

main()
