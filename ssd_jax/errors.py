"""Errors that mean "the user's input is wrong", as opposed to a bug.

The command-line tools print these as one line (``error: <first line>``) and exit with status 2;
``--verbose`` adds the rest of the message (e.g. every mismatching checkpoint key) and the
traceback. Anything else propagates with its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input: a config key or value, a file, a checkpoint, data. The message's first line
    is a complete summary; later lines are details for ``--verbose``."""


class ConfigError(UserError, ValueError):
    """A config value out of range, or a config file that cannot be used."""


class UnknownConfigKeyError(ConfigError, KeyError):
    """A config key that the config does not have; the message names the nearest valid keys."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class InputFileError(UserError, FileNotFoundError):
    """A file or folder the user named does not exist or cannot be used."""


class OutputExistsError(UserError, FileExistsError):
    """Writing would replace an input or an earlier output; ``--overwrite`` allows it."""
