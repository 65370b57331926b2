"""What each command runs with: the configurations (frozen dataclasses whose docstrings are the `--help`), the
presets, the command line that fills them (`parse`) and a run's saved settings (`saved`). Imports no torch."""
