"""Running torchrun's workers for ``xtune train``, and stopping them cleanly.

torchrun starts each worker in a session of its own, so a Ctrl-C in the terminal or a ``kill`` of
``xtune train`` never reaches them: without help they are orphaned and train on. torchrun itself, on
a signal, gives its workers 30 seconds and then kills them, which can cut a large checkpoint short.
So torchrun runs in a session of its own too, and ``xtune train`` forwards SIGTERM/SIGINT to the
workers themselves: each finishes its step, all agree on the iteration, rank 0 (or every rank, under
DeepSpeed) saves, and they exit. ``xtune train`` waits for that and exits 128 + the signal number
(130 for SIGINT, 143 for SIGTERM). A second signal kills the workers at once.
"""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
WATCH_PARENT_ENV = "XTUNE_WATCH_PARENT"  # a program that starts `xtune train` (the board) names its own pid


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux ``/proc``; empty elsewhere)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended while we looked
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def process_tree(pid: int) -> list[int]:
    """``pid`` and all of its descendants."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        queue += child_pids(current)
    return found


def _signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            continue


def run_workers(command: list[str], env: dict | None = None) -> int:
    """Run torchrun with ``command``, forwarding stop signals to its workers; the job's exit status.

    Returns:
        torchrun's exit status, or 128 + the signal number when a stop signal was forwarded.
    """
    process = subprocess.Popen(command, env=env, start_new_session=True)
    received: list[int] = []

    def forward(signum, frame) -> None:
        received.append(signum)
        workers = child_pids(process.pid)
        if len(received) == 1:
            name = signal.Signals(signum).name
            print(
                f"xtune: {name}: the workers finish their step, save a checkpoint and exit "
                "(send it again to kill them without saving)",
                file=sys.stderr,
            )
            # no workers yet (still starting): torchrun's own handler stops them
            _signal_all(workers or [process.pid], signum)
        else:
            _signal_all(process_tree(process.pid), signal.SIGKILL)

    previous = {s: signal.signal(s, forward) for s in STOP_SIGNALS}
    try:
        status = process.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 128 + received[0] if received else status


def die_with_parent() -> None:
    """Ask Linux to send this process SIGTERM when its parent (torchrun) dies, so a killed launcher
    never leaves workers training on: they save and exit as on any stop signal."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return


def watch_parent(interval: float = 1.0) -> bool:
    """Stop this run as on SIGTERM (save, then exit) once the program that started it is gone.

    A program that starts ``xtune train`` and may itself be killed outright (the board, SIGKILL or
    a crash) sets :data:`WATCH_PARENT_ENV` to its own pid. ``PR_SET_PDEATHSIG`` cannot be used there: it
    fires when the *thread* that started the child ends, and a web server's worker threads come and go.
    Only the process whose parent is that pid watches (torchrun's workers inherit the variable but have
    another parent; the launcher forwards the signal to them). Returns whether a watch was started.
    """
    value = os.environ.get(WATCH_PARENT_ENV, "")
    if not value.isdigit() or os.getppid() != int(value):
        return False
    parent = int(value)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os.kill(os.getpid(), signal.SIGTERM)  # the parent died: its child was handed to another process

    threading.Thread(target=watch, name="xtune-watch-parent", daemon=True).start()
    return True
