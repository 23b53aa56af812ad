"""``python -m mechlab`` runs the ``mechlab`` command line."""

from mechlab.cli import run

run()
