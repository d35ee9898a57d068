"""`python -m control.cli`: the same as the `clawfleet` console script."""

import sys

from control.cli import main

sys.exit(main())
