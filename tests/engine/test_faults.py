"""Faults around a run: a busy work dir, damaged checkpoints, changed data on resume, a full disk,
killed or damaged processed-data caches. Each ends in one clear message, never in a silent restart."""

import errno
import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

from xtune.engine.lock import LOCK_NAME, WorkDirLock
from xtune.testing.training import train

pytestmark = pytest.mark.slow
LORA = "tiny_llama_lora_identity_e3"


def _options(model, data, **extra) -> dict:
    return {
        "pretrained_model_name_or_path": str(model),
        "data_path": str(data),
        "data_format": "alpaca",
        "dtype": "fp32",
        "batch_size": 2,
        "accumulative_counts": 2,
        "max_epochs": 1,
        "save_steps": 1,
        "save_total_limit": 3,
        "evaluation_inputs": [],
        "max_length": 128,
        **extra,
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_llama, alpaca_file):
    """A finished run with checkpoints after steps 2, 3 and 4 (iterations 4, 6, 8); copy it to change it."""
    work = tmp_path_factory.mktemp("faults") / "run"
    assert train(LORA, work, _options(tiny_llama, alpaca_file)) == 0
    assert sorted(p.name for p in work.glob("iter_*.pth")) == ["iter_4.pth", "iter_6.pth", "iter_8.pth"]
    return work


def _copy(trained, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(trained, work)
    # last_checkpoint names absolute paths: point it at the copy
    (work / "last_checkpoint").write_text(str(work / "iter_8.pth"))
    return work


def _truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# ----------------------------------------------------------------------------------------- work-dir lock
def test_a_second_run_into_a_live_work_dir_is_refused(tiny_llama, alpaca_file, tmp_path, capsys):
    lock = WorkDirLock(tmp_path)
    assert lock.acquire() is None  # held by this (live) process, as by a run in progress
    try:
        assert train(LORA, tmp_path, _options(tiny_llama, alpaca_file)) == 2
    finally:
        lock.release()
    err = capsys.readouterr().err
    assert f"work dir {tmp_path} is in use by a running training (pid {os.getpid()}" in err
    assert "Use another --work-dir" in err
    assert not list(tmp_path.glob("iter_*")) and not (tmp_path / "last_checkpoint").exists()  # nothing touched


def test_a_stale_lock_is_replaced_and_the_lock_is_given_back(tiny_llama, alpaca_file, tmp_path, capsys):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process that has ended, as after kill -9
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": "x"}))
    assert train(LORA, tmp_path, _options(tiny_llama, alpaca_file, save_steps=10**6)) == 0
    assert f"removed a stale lock of pid {pid}" in capsys.readouterr().err
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_lock_from_another_host_is_refused_with_the_way_out(tiny_llama, alpaca_file, tmp_path, capsys):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 4242, "host": "gpu-node-7", "started": "today"}))
    assert train(LORA, tmp_path, _options(tiny_llama, alpaca_file)) == 2
    err = capsys.readouterr().err
    assert "locked by pid 4242 on host gpu-node-7" in err and f"delete {tmp_path / LOCK_NAME}" in err


# ----------------------------------------------------------------------------------------- resume auto
def test_resume_auto_names_what_it_resumes_and_the_damaged_ones_it_skips(trained, tmp_path, capsys):
    work = _copy(trained, tmp_path)
    _truncate(work / "iter_8.pth")
    from xtune.cli.train import _resume_target

    assert _resume_target("auto", str(work)) == (True, str(work / "iter_6.pth"))
    err = capsys.readouterr().err
    assert f"--resume auto: skipping {work / 'iter_8.pth'}: cannot read checkpoint" in err
    assert f"resuming from {work / 'iter_6.pth'}" in err


def test_resume_auto_fails_when_checkpoints_exist_but_none_loads(trained, tiny_llama, alpaca_file, tmp_path, capsys):
    work = _copy(trained, tmp_path)
    for path in work.glob("iter_*.pth"):
        _truncate(path)
    options = _options(tiny_llama, alpaca_file)
    assert train(LORA, work, options, extra_args=["--resume", "auto"]) == 2
    err = capsys.readouterr().err
    assert "has 3 checkpoint(s) but none loads" in err and "starting from scratch" not in err
    assert len(list(work.glob("iter_*.pth"))) == 3  # nothing rotated away


def test_resume_with_another_batch_size_is_refused_unless_allowed(trained, tiny_llama, alpaca_file, tmp_path, capsys):
    work = _copy(trained, tmp_path)
    options = _options(tiny_llama, alpaca_file, batch_size=4, max_epochs=3)
    assert train(LORA, work, options, extra_args=["--resume", "auto"]) == 2
    err = capsys.readouterr().err
    assert "cannot resume: the checkpoint was trained with other data settings (batch_size 2 -> 4)" in err
    assert "--allow-changed-data" in err
    assert train(LORA, work, options, extra_args=["--resume", "auto", "--allow-changed-data"]) == 0
    assert "resuming with changed data settings (batch_size 2 -> 4)" in capsys.readouterr().out


def test_resume_with_other_data_is_refused(trained, tiny_llama, tmp_path, capsys):
    work = _copy(trained, tmp_path)
    other = tmp_path / "other.json"
    other.write_text(json.dumps([{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(16)]))
    assert train(LORA, work, _options(tiny_llama, other, max_epochs=2), extra_args=["--resume", "auto"]) == 2
    assert "data (tokenized samples)" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------- full disk
def test_a_full_disk_gives_one_error_naming_path_and_space(tiny_llama, alpaca_file, tmp_path, monkeypatch, capsys):
    from mmengine.fileio.backends.local_backend import LocalBackend

    original = LocalBackend.put

    def put(self, obj, filepath):
        if str(filepath).endswith("iter_6.pth.tmp"):
            with open(filepath, "wb") as handle:
                handle.write(obj[:100])  # part of it written, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filepath))
        return original(self, obj, filepath)

    monkeypatch.setattr(LocalBackend, "put", put)
    assert train(LORA, tmp_path, _options(tiny_llama, alpaca_file)) == 2
    err = capsys.readouterr().err
    assert f"xtune: error: cannot write checkpoint {tmp_path / 'iter_6.pth'}: No space left on device (" in err
    assert "GiB free in" in err and "Traceback" not in err
    assert not list(tmp_path.glob("*.tmp*"))  # nothing half-written left
    assert (tmp_path / "last_checkpoint").read_text().strip() == str(tmp_path / "iter_4.pth")


def test_a_left_over_temporary_checkpoint_is_removed(trained, tiny_llama, alpaca_file, tmp_path, capsys):
    work = _copy(trained, tmp_path)
    (work / "iter_10.pth.tmp").write_bytes(b"half a checkpoint")
    options = _options(tiny_llama, alpaca_file, max_epochs=2)
    assert train(LORA, work, options, extra_args=["--resume", "auto"]) == 0
    err = capsys.readouterr().err
    assert f"removed {work / 'iter_10.pth.tmp'}, left by an interrupted save" in err
    assert f"resuming from {work / 'iter_8.pth'}" in err


# ----------------------------------------------------------------------------------------- data cache
def test_a_killed_cache_build_is_cleaned_and_a_damaged_cache_rebuilt(tiny_llama, alpaca_file, tmp_path, capsys):
    from xtune.dataset.cache import remove_stale_builds

    cache = tmp_path / "cache"
    options = _options(tiny_llama, alpaca_file, save_steps=10**6, **{"train_dataset.cache_dir": str(cache)})
    assert train(LORA, tmp_path / "a", options) == 0
    (entry,) = [p for p in cache.iterdir() if p.is_dir()]
    # a build killed mid-way (its pid is gone), and a live one of this process that must stay
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True).stdout)
    killed = cache / f"{entry.name}.build-{socket.gethostname()}-{dead}"
    old_style = cache / f"{entry.name}.build{dead}"
    live = cache / f"{entry.name}.build-{socket.gethostname()}-{os.getpid()}"
    for folder in (killed, old_style, live):
        folder.mkdir()
    assert set(remove_stale_builds(cache)) == {killed, old_style} and live.exists()
    live.rmdir()

    arrow = next(entry.glob("*.arrow"))
    _truncate(arrow)
    capsys.readouterr()
    assert train(LORA, tmp_path / "b", options) == 0
    out = capsys.readouterr().out
    assert f"the processed-data cache {entry} is damaged" in out and "rebuilding it" in out
    assert (entry / "dataset_info.json").exists()
