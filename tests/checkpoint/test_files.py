"""The ``last_checkpoint`` pointer: one light helper that every reader and the checkpoint hook use."""

import subprocess
import sys

import pytest

from xtune.checkpoint.files import POINTER_NAME, last_checkpoint, read_pointer, write_pointer
from xtune.errors import CheckpointError


def test_the_pointer_names_what_was_written_and_last_checkpoint_only_what_exists(tmp_path):
    assert read_pointer(tmp_path) is None and last_checkpoint(tmp_path) is None  # no pointer yet
    folder = tmp_path / "iter_4.pth"  # a DeepSpeed folder reads like a file
    write_pointer(tmp_path, str(folder))
    assert (tmp_path / POINTER_NAME).read_text() == str(folder)
    assert read_pointer(tmp_path) == str(folder) and last_checkpoint(tmp_path) is None  # not there (moved away)
    folder.mkdir()
    assert last_checkpoint(tmp_path) == str(folder)
    (tmp_path / POINTER_NAME).write_text("  \n")
    assert read_pointer(tmp_path) is None
    assert not list(tmp_path.glob(f"{POINTER_NAME}.tmp*"))  # the temporary file was renamed


def test_a_failed_pointer_write_keeps_the_old_pointer(tmp_path, monkeypatch):
    write_pointer(tmp_path, "old")

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("xtune.checkpoint.files.os.replace", full_disk)
    with pytest.raises(CheckpointError, match=f"cannot write checkpoint {tmp_path / POINTER_NAME}: No space left"):
        write_pointer(tmp_path, "new")
    assert read_pointer(tmp_path) == "old" and not list(tmp_path.glob(f"{POINTER_NAME}.tmp*"))


def test_the_board_reads_the_pointer_without_importing_torch_or_the_engine():
    code = (
        "import sys, xtune.checkpoint.files, xtune.board.runs\n"
        "print(sorted(m for m in ('torch', 'mmengine', 'xtune.engine') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
