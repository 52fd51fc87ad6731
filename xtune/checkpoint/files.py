"""The work dir's checkpoint files without torch or mmengine: the ``last_checkpoint`` pointer, atomic
writes, and the one error for a checkpoint that could not be written.

``last_checkpoint`` is a text file in the work dir holding the path of the newest finite checkpoint
(an ``iter_N.pth`` file, or a DeepSpeed ``iter_N.pth/`` folder). It is replaced atomically after a
checkpoint has been renamed into place, so it never names a half-written one. Every reader goes through
:func:`read_pointer` / :func:`last_checkpoint`; the checkpoint hook writes it with :func:`write_pointer`.
"""

from __future__ import annotations

import contextlib
import os
import os.path as osp
import shutil
from pathlib import Path

from xtune.errors import CheckpointError

POINTER_NAME = "last_checkpoint"


def read_pointer(work_dir: str | Path) -> str | None:
    """The path ``work_dir/last_checkpoint`` names, whether or not it still exists; None without one."""
    pointer = Path(work_dir) / POINTER_NAME
    if not pointer.is_file():
        return None
    text = pointer.read_text().strip()
    return text or None


def last_checkpoint(work_dir: str | Path) -> str | None:
    """The checkpoint ``work_dir/last_checkpoint`` names, if the pointer and that checkpoint exist."""
    path = read_pointer(work_dir)
    return path if path and osp.exists(path) else None


def write_pointer(work_dir: str | Path, checkpoint: str) -> None:
    """Point ``work_dir/last_checkpoint`` at ``checkpoint`` (atomically; see :func:`write_atomically`)."""
    write_atomically(osp.join(str(work_dir), POINTER_NAME), checkpoint)


def write_failure(path: str, exc: OSError) -> CheckpointError:
    """The one-line error for a checkpoint that could not be written (a full disk, a read-only or gone
    folder), naming the path and the free space there."""
    folder = osp.dirname(osp.abspath(path))
    try:
        free = f"{shutil.disk_usage(folder).free / 2**30:.2f} GiB free"
    except OSError:
        free = "free space unknown"
    reason = exc.strerror or str(exc)
    return CheckpointError(
        f"cannot write checkpoint {path}: {reason} ({free} in {folder}). Nothing half-written was kept and "
        "last_checkpoint still names the previous checkpoint. Free some space (or lower save_total_limit) and "
        "resume with --resume auto."
    )


def remove_path(path: str) -> None:
    """Delete a file or folder if it exists (a temporary checkpoint after a failed write)."""
    if osp.isdir(path) and not osp.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif osp.lexists(path):
        with contextlib.suppress(OSError):
            os.remove(path)


def write_atomically(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename.

    Raises:
        CheckpointError: The write failed (a full disk); the temporary file is removed.
    """
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        remove_path(tmp)
        raise write_failure(path, exc) from None
