"""Write a conversion's output all at once: into a temporary folder, renamed into place at the end.

A conversion that fails half-way (a bad checkpoint, a full disk, Ctrl-C) leaves no ``SAVE_DIR`` that
looks like a model but is not one.
"""

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from xtune.errors import XtuneError


def check_save_dir(save_dir: str | Path, overwrite: bool = False) -> Path:
    """Refuse a ``save_dir`` that already holds files, unless ``overwrite``; return it as a Path.

    Raises:
        XtuneError: ``save_dir`` is a file, or a non-empty folder and ``overwrite`` is off.
    """
    save_dir = Path(save_dir)
    if save_dir.is_file():
        raise XtuneError(f"SAVE_DIR {save_dir} is a file; pass a folder path.")
    if save_dir.is_dir() and any(save_dir.iterdir()) and not overwrite:
        raise XtuneError(
            f"SAVE_DIR {save_dir} exists and is not empty. Pass another folder, or --overwrite to replace it."
        )
    return save_dir


@contextmanager
def staged_dir(save_dir: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder next to ``save_dir`` that becomes ``save_dir`` when the block succeeds.

    On any exception the temporary folder (and any parent folders this created) is removed and
    ``save_dir`` is left as it was.

    Raises:
        XtuneError: See :func:`check_save_dir`.
    """
    save_dir = check_save_dir(save_dir, overwrite).absolute()
    created = [parent for parent in reversed(save_dir.parents) if not parent.exists()]
    save_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = save_dir.parent / f".{save_dir.name}.xtune-tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)  # left by an earlier run with the same pid that was killed
    staging.mkdir()
    try:
        yield staging
        _replace(staging, save_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for parent in reversed(created):
            if parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
        raise


def _replace(staging: Path, save_dir: Path) -> None:
    if save_dir.is_dir() and not any(save_dir.iterdir()):
        save_dir.rmdir()
    if not save_dir.exists():
        os.replace(staging, save_dir)
        return
    # --overwrite: move the old folder aside first, so that a failure here still leaves one whole folder.
    old = save_dir.parent / f".{save_dir.name}.xtune-old-{os.getpid()}"
    os.replace(save_dir, old)
    os.replace(staging, save_dir)
    shutil.rmtree(old, ignore_errors=True)
