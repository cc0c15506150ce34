"""``python -m robust_encoders ...`` runs the ``robust-encoders`` command line."""

from robust_encoders.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
