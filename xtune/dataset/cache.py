"""The processed-data cache on disk: stale build folders and damaged entries.

A cache entry is built by rank 0 in ``<key>.build-<host>-<pid>`` and saved as ``<key>.tmp-<host>-<pid>``,
then renamed to ``<key>``. A build that was killed leaves those folders behind; they are removed once
their process is gone (only this host's: another host's build cannot be checked from here). An entry
that no longer loads (a truncated or edited file) is removed with a message naming it, and rebuilt.
"""

import os
import re
import shutil
import socket
from pathlib import Path

import datasets
from mmengine.logging import print_log

_WORK = re.compile(r"\.(?:build|tmp)(?:-(?P<host>.+)-)?(?P<pid>\d+)$")


def work_suffix(kind: str) -> str:
    """``.build-<host>-<pid>`` or ``.tmp-<host>-<pid>`` for this process."""
    return f".{kind}-{socket.gethostname()}-{os.getpid()}"


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_builds(cache_root: Path) -> list[Path]:
    """Delete the build folders of killed builds on this host; the ones removed."""
    removed = []
    if not cache_root.is_dir():
        return removed
    for path in cache_root.iterdir():
        found = _WORK.search(path.name)
        if not found or (found["host"] not in (None, socket.gethostname())) or _running(int(found["pid"])):
            continue
        shutil.rmtree(path, ignore_errors=True)
        print_log(f"removed {path}: a processed-data build whose process ({found['pid']}) is gone", logger="current")
        removed.append(path)
    return removed


def load_cached(target: Path) -> datasets.Dataset | None:
    """The cached dataset at ``target``, or None when it is missing or damaged (then it is removed)."""
    if not (target / "dataset_info.json").exists():
        return None
    try:
        data = datasets.load_from_disk(str(target))
        data["length"]  # reads a whole column: a truncated file fails here, not later in training
    except (OSError, ValueError, KeyError, TypeError) as exc:  # pyarrow's errors derive from these
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print_log(
            f"the processed-data cache {target} is damaged ({first[:200]}); removing and rebuilding it",
            logger="current",
            level=30,
        )
        shutil.rmtree(target, ignore_errors=True)
        return None
    return data
