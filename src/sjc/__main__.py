"""`python -m sjc`: the `sjc` command."""

import sys

from sjc.app.commands.cli import main

sys.exit(main())
