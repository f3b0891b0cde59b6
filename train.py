"""``python train.py DATA [flags]`` (also under torchrun / torch.distributed.launch): gaheads train."""

import sys

from gaheads.train.cli import main

if __name__ == "__main__":
    sys.exit(main())
