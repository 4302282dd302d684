"""The exception types of problems a user can fix, apart from the library's own bugs.

`ft` turns a `UserInputError` (and a missing or unreadable input file) into one line on stderr and
exit status 2, and a runtime failure that is nobody's input (the loss diverged, the disk filled)
into one line and exit status 1; anything else is a bug in the library and shows its traceback.
Both types are ValueErrors, so code that caught ValueError before still catches them.
"""

from __future__ import annotations


class UserInputError(ValueError):
    """A flag, a setting, a file's contents, a checkpoint or a run folder that cannot be used as
    given; the message names the problem and the fix."""


class ConfigError(UserInputError):
    """A setting (a TransformerConfig or TrainConfig field, a flag, a combination of them) that is out
    of range or conflicts with another."""


__all__ = ["ConfigError", "UserInputError"]
