"""``python -m covey`` runs the command line."""

try:
    from covey.cli import main
except KeyboardInterrupt:  # Ctrl-C as the command line loads: no traceback
    raise SystemExit(130) from None

main()
