"""``xtune train``'s launcher forwards SIGINT/SIGTERM to the workers torchrun started and waits for them."""

import signal
import subprocess
import sys
import textwrap
import time

import pytest

from xtune.cli.workers import process_tree

# Stands in for torchrun: starts a "worker" in a session of its own (as torchrun does), returns its status.
FAKE_TORCHRUN = textwrap.dedent(
    """
    import subprocess, sys
    worker = subprocess.Popen([sys.executable, sys.argv[1], *sys.argv[2:]], start_new_session=True)
    sys.exit(1 if worker.wait() else 0)  # torchrun reports a failed worker as 1
    """
)
# A worker that, on a stop signal, takes a while to save, writes which signal it got and exits 128 + it.
FAKE_WORKER = textwrap.dedent(
    """
    import pathlib, signal, sys, time
    got = []
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, lambda signum, frame: got.append(signum))
    pathlib.Path(sys.argv[1]).write_text("ready")
    while not got:
        time.sleep(0.01)
    time.sleep(1.0)  # a slow checkpoint: the launcher must wait for it
    pathlib.Path(sys.argv[2]).write_text(str(got[0]))
    sys.exit(128 + got[0])
    """
)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_signal_reaches_the_workers_and_the_launcher_waits_for_their_save(tmp_path, signum):
    (tmp_path / "torchrun.py").write_text(FAKE_TORCHRUN)
    (tmp_path / "worker.py").write_text(FAKE_WORKER)
    ready, saved = tmp_path / "ready", tmp_path / "saved"
    command = [sys.executable, str(tmp_path / "torchrun.py"), str(tmp_path / "worker.py"), str(ready), str(saved)]
    script = f"import sys; from xtune.cli.workers import run_workers; sys.exit(run_workers({command!r}))"
    launcher = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not ready.exists() and time.time() < deadline:
        time.sleep(0.02)
    tree = process_tree(launcher.pid)
    assert len(tree) == 3  # launcher, torchrun, worker
    launcher.send_signal(signum)
    _, err = launcher.communicate(timeout=60)
    assert saved.read_text() == str(int(signum))  # the worker got the signal and finished its save
    assert launcher.returncode == 128 + signum  # "interrupted", not a user error (2) or torchrun's 1
    assert f"{signal.Signals(signum).name}: the workers finish their step, save a checkpoint and exit" in err
    time.sleep(0.2)
    assert all(subprocess.run(["kill", "-0", str(pid)], capture_output=True).returncode for pid in tree)
