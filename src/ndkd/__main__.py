"""``python -m ndkd``: the same as the ``ndkd`` command."""

from ndkd.cli import run

run()
