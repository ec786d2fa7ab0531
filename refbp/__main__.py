"""``python -m refbp``: the same as the ``refbp`` command."""

import sys

from .apps.cli import main

sys.exit(main())
