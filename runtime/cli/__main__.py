"""``python -m runtime.cli`` runs the ``agents-worker`` command."""

from runtime.cli import main

main()
