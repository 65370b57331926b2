"""`python -m sjc`: the `sjc` command."""

import sys

from sjc.app.cli import main

sys.exit(main())
