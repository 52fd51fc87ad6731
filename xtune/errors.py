"""User-facing errors.

Every problem a user can fix (a bad path, a bad config key, a malformed data row) is raised as an
:class:`XtuneError`. The CLI prints its message on one line, without a traceback, and exits 2.
Messages say what was received, what was expected and how to fix it.
"""


class XtuneError(Exception):
    """A problem in the user's input that the user can fix."""


class ConfigError(XtuneError):
    """A config file, config name or config option is wrong."""


class DataError(XtuneError):
    """A data file, row or column is wrong."""


class CheckpointError(XtuneError):
    """A checkpoint is missing, truncated or belongs to another model."""
