"""User-facing errors.

Every problem a user can fix (a bad path, a bad config key, a malformed data row) is raised as an
:class:`XtuneError`. The CLI prints its message on one line, without a traceback, and exits 2.
Messages say what was received, what was expected and how to fix it.
"""

import re


class XtuneError(Exception):
    """A problem in the user's input that the user can fix."""


class ConfigError(XtuneError):
    """A config file, config name or config option is wrong."""


class DataError(XtuneError):
    """A data file, row or column is wrong."""


class CheckpointError(XtuneError):
    """A checkpoint is missing, truncated or belongs to another model."""


def refused_pickle(exc: Exception) -> str | None:
    """What a ``torch.load(weights_only=True)`` refusal names (``"a pickled posix.system"``), or None when
    the error is not such a refusal (a truncated or foreign file)."""
    found = re.search(r"GLOBAL ([\w.]+)", str(exc))
    return f"a pickled {found.group(1)}" if found else None
