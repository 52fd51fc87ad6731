"""Finding the checkpoint to resume from."""

import os.path as osp
import re
from pathlib import Path

from xtune.convert.zero import is_zero_checkpoint
from xtune.engine.runner import load_checkpoint_file
from xtune.errors import CheckpointError

_ITER = re.compile(r"iter_(\d+)\.pth$")


def newest_valid_checkpoint(work_dir: str | Path) -> str | None:
    """The newest checkpoint in ``work_dir`` that loads, or ``None`` when there is none.

    ``last_checkpoint`` is tried first; when it is missing or names a damaged file, the ``iter_*.pth``
    files (or DeepSpeed folders) are tried newest first.
    """
    work_dir = Path(work_dir)
    candidates = []
    pointer = work_dir / "last_checkpoint"
    if pointer.is_file():
        candidates.append(pointer.read_text().strip())
    found = sorted(work_dir.glob("iter_*.pth"), key=lambda p: int(_ITER.search(p.name).group(1)), reverse=True)
    candidates += [str(p) for p in found if str(p) not in candidates]
    for candidate in candidates:
        if not osp.exists(candidate):
            continue
        try:
            if osp.isdir(candidate):
                # DeepSpeed folders are renamed into place once every rank has written its files
                if is_zero_checkpoint(candidate):
                    return candidate
                continue
            load_checkpoint_file(candidate)
            return candidate
        except CheckpointError:
            continue
    return None
