"""``python -m scalesim`` is the ``scalesim`` command."""

from scalesim.cli import main

main()
