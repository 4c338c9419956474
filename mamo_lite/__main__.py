"""``python -m mamo_lite``: the command line (see :mod:`mamo_lite.cli`)."""

import sys

from mamo_lite.cli import main

sys.exit(main())
