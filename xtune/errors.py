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


def model_load_problem(path: str, exc: Exception) -> str:
    """Why ``from_pretrained(path)`` failed, in one line: a missing local folder, a weight file holding
    pickled code (refused by ``weights_only`` loading, never run), or the library's first line."""
    from pathlib import Path

    what = refused_pickle(exc)
    if what:
        return (
            f"'{path}': a weight file holds {what}, which is refused (loading it could run code). Use the "
            "model's safetensors weights, or a model from a source you trust"
        )
    text = str(path)
    if not Path(text).expanduser().exists() and (text.startswith(("/", ".", "~")) or text.count("/") >= 2):
        return f"'{path}': no such directory. Check the path, or give a hub name like org/model"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"'{path}': {first}"
