"""Finding the checkpoint to resume from, and clearing what interrupted saves left behind."""

import os.path as osp
import re
import shutil
from pathlib import Path

from xtune.checkpoint.files import POINTER_NAME, read_pointer
from xtune.convert.zero import is_zero_checkpoint
from xtune.engine.checkpointing import load_checkpoint_file
from xtune.errors import CheckpointError

_ITER = re.compile(r"iter_(\d+)\.pth$")


def find_resume_checkpoint(work_dir: str | Path) -> tuple[str | None, list[tuple[str, str]]]:
    """The newest checkpoint in ``work_dir`` that loads, and the newer ones that did not, with why.

    ``last_checkpoint`` is tried first; when it is missing or names a damaged file, the ``iter_*.pth``
    files (or DeepSpeed folders) are tried newest first. Temporary names (``iter_N.pth.tmp``) of
    interrupted saves are never candidates.

    Returns:
        The checkpoint (``None`` when none loads) and ``(path, reason)`` for each one skipped.
    """
    work_dir = Path(work_dir)
    candidates = []
    named = read_pointer(work_dir)
    if named:
        candidates.append(named)
    found = sorted(work_dir.glob("iter_*.pth"), key=lambda p: int(_ITER.search(p.name).group(1)), reverse=True)
    candidates += [str(p) for p in found if str(p) not in candidates]
    skipped: list[tuple[str, str]] = []
    for candidate in candidates:
        if not osp.exists(candidate):
            continue  # last_checkpoint naming a file that was moved away: the glob finds the rest
        if osp.isdir(candidate):
            # DeepSpeed folders are renamed into place once every rank has written its files
            if is_zero_checkpoint(candidate):
                return candidate, skipped
            skipped.append((candidate, "an incomplete DeepSpeed checkpoint folder"))
            continue
        try:
            load_checkpoint_file(candidate)
        except CheckpointError as exc:
            skipped.append((candidate, str(exc)))
            continue
        return candidate, skipped
    return None, skipped


def newest_valid_checkpoint(work_dir: str | Path) -> str | None:
    """The newest checkpoint in ``work_dir`` that loads, or ``None`` when there is none."""
    return find_resume_checkpoint(work_dir)[0]


def remove_temporary_files(work_dir: str | Path) -> list[str]:
    """Delete the temporary checkpoint files and folders (``iter_N.pth.tmp``, ``last_checkpoint.tmp<pid>``)
    that a save cut short (kill -9, a full disk) left in ``work_dir``; their names.

    Only call this while holding the work dir's lock: a live run's temporary files are in use.
    """
    removed = []
    for path in [*Path(work_dir).glob("iter_*.pth.tmp"), *Path(work_dir).glob(f"{POINTER_NAME}.tmp*")]:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(str(path))
    return removed
