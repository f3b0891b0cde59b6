"""``python -m gaheads.train``: the same as ``gaheads train``."""

import sys

from .cli import main

sys.exit(main())
