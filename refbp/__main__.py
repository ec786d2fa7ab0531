"""``python -m refbp``: the same as the ``refbp`` command."""

import sys

try:
    from .apps.cli import main
except KeyboardInterrupt:  # Ctrl-C in the first milliseconds: the same line as at any other time
    print("error: interrupted", file=sys.stderr)
    sys.exit(128 + 2)  # refbp.apps.cli.EXIT_INTERRUPTED, which could not be imported

sys.exit(main())
