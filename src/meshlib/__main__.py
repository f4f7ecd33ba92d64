"""`python -m meshlib` runs the CLI."""

import sys

from meshlib.cli import main

sys.exit(main())
