"""``python -m simclr`` (and ``torchrun ... -m simclr pretrain ...``) runs the command-line tool."""

import sys

from simclr.cli import main

sys.exit(main())
