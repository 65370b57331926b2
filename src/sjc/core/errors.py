"""The one base class of user mistakes. Imports no torch.

Every error a user can cause by what they ask for (a prompt outside a prior's vocabulary, a setting out of
range, missing weights, an occupied output folder, an unreadable checkpoint) derives from `UserError`, so
the command line and the web page catch one class at their edge and print its message, which names the
bad value and the fix. Errors of the run itself (a NaN, a signal) are not user errors.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in what was asked for: shown as one line (exit status 2 on the command line)."""


class ConfigError(UserError, ValueError):
    """Settings that are out of range, or valid alone but not together or not with this prior."""


class DeviceError(UserError, ValueError):
    """The requested device does not exist on this machine."""
