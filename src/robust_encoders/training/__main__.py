"""``python -m robust_encoders.training --concept star`` (also under ``accelerate launch -m``)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
