"""Finding the checkpoint to resume from."""

import os.path as osp
import re
from pathlib import Path

from xtune.engine.runner import load_checkpoint_file
from xtune.errors import CheckpointError

_ITER = re.compile(r"iter_(\d+)\.pth$")


def newest_valid_checkpoint(work_dir: str | Path) -> str | None:
    """The newest checkpoint in ``work_dir`` that loads, or ``None`` when there is none.

    ``last_checkpoint`` is tried first; when it is missing or names a damaged file, the ``iter_*.pth``
    files are tried newest first.
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
                return candidate  # a DeepSpeed checkpoint folder
            load_checkpoint_file(candidate)
            return candidate
        except CheckpointError:
            continue
    return None
