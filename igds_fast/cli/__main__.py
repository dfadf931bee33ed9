"""``python -m igds_fast.cli``: the same as the ``igds-fast`` command."""

from . import main

main()
