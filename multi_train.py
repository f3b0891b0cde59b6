"""``python multi_train.py SETUP... -m MODEL...`` (also under torchrun): gaheads multi-train."""

import sys

from gaheads.train.multi import main

if __name__ == "__main__":
    sys.exit(main())
