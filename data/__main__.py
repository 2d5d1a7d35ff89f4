"""``python -m data --config CONFIG [--data PANEL]``: same as ``python -m data.summary``."""

import sys

from data.summary import main

sys.exit(main())
