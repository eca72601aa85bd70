"""``python -m covey`` runs the command line."""

from covey.cli import main

main()
