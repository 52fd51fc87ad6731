"""Training runs: the ``xtune train`` child processes the board starts, and what their work dirs say.

A child runs in its own process group (``start_new_session``), so Stop reaches every worker torchrun
starts: SIGTERM makes xtune finish the current step, save a checkpoint and exit with the resume command.
The board stops its children when it exits (:meth:`Jobs.shutdown`), so no run outlives it unseen; a
board killed outright (SIGKILL) cannot, so its children watch it and stop themselves
(:func:`xtune.cli.workers.watch_parent`).
Its output goes to ``WORK_DIR/board_train.log``; its exit status to ``WORK_DIR/board_run.json``.
"""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from xtune.checkpoint.files import POINTER_NAME, last_checkpoint
from xtune.cli.workers import WATCH_PARENT_ENV
from xtune.errors import XtuneError

LOG_NAME = "board_train.log"
RECORD_NAME = "board_run.json"
ITER_LINE = re.compile(r"Iter\(train\)\s*\[\s*(\d+)/(\d+)\](.*)")
SAVED_LINE = re.compile(r"Saving checkpoint at (\d+) iterations")
FIELD = re.compile(r"(\w+): ([^\s]+)")


class TrainingJob:
    """One ``xtune ARGS`` child process in its own process group, its output appended to the log.

    Args:
        args: The arguments after ``xtune`` (``["train", CONFIG, ...]``).
        work_dir: The run's work dir (the log and the exit record go there).
        env: Extra environment variables (``NPROC_PER_NODE``).
        command: The command as shown to the user, written at the top of the log.
        program: What runs ``args`` (default: this Python's ``-m xtune``).
    """

    def __init__(
        self,
        args: list[str],
        work_dir: Path,
        env: dict[str, str] | None = None,
        command: str = "",
        program: list[str] | None = None,
    ) -> None:
        self.program = list(program or [sys.executable, "-m", "xtune"])
        self.args = list(args)
        self.work_dir = Path(work_dir)
        self.env = dict(env or {})
        self.command = command or " ".join(["xtune", *args])
        self.process: subprocess.Popen | None = None
        self.started = 0.0
        self.stop_requested = False

    def start(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        with open(self.work_dir / LOG_NAME, "a", encoding="utf-8") as log:
            log.write(f"$ {self.command}\n")
            log.flush()
            self.process = subprocess.Popen(
                [*self.program, *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # a run outlives no board: killed outright, the board leaves it to stop itself (save, exit)
                env={**os.environ, **self.env, "PYTHONUNBUFFERED": "1", WATCH_PARENT_ENV: str(os.getpid())},
                start_new_session=True,  # its own process group: Stop reaches every worker
            )
        self.started = time.time()
        _write_record(self.work_dir, {"command": self.command, "started": self.started, "returncode": None})

    def poll(self) -> int | None:
        """The exit status once the child has ended (it is reaped then), else None."""
        if self.process is None:
            return None
        code = self.process.poll()
        if code is not None and _read_record(self.work_dir).get("returncode") is None:
            record = {"command": self.command, "started": self.started, "ended": time.time(), "returncode": code}
            _write_record(self.work_dir, {**record, "stopped": self.stop_requested})
        return code

    @property
    def running(self) -> bool:
        return self.process is not None and self.poll() is None

    def _signal(self, signum: int) -> None:
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:  # ended meanwhile
            pass

    def stop(self) -> None:
        """Ask the run to save and stop (SIGTERM to its process group); it ends after the current step."""
        if self.running:
            self.stop_requested = True
            self._signal(signal.SIGTERM)

    def terminate(self, timeout: float = 60.0) -> None:
        """Stop the run and wait; kill its process group if it has not ended within ``timeout`` seconds."""
        if not self.running:
            return
        self.stop()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self.process.wait()
        self.poll()


class Jobs:
    """The runs this board started; one trains at a time (they would compete for the same devices)."""

    def __init__(self) -> None:
        self._jobs: dict[Path, TrainingJob] = {}
        self._lock = threading.Lock()

    def start(
        self, args: list[str], work_dir: Path, env: dict[str, str], command: str, program: list[str] | None = None
    ) -> TrainingJob:
        """Start a run (see :class:`TrainingJob` for the arguments).

        Raises:
            XtuneError: Another run is still training.
        """
        with self._lock:
            busy = self.active()
            if busy is not None:
                raise XtuneError(f"{busy.work_dir.name} is still training; stop it (or wait) before starting another.")
            job = TrainingJob(args, work_dir, env, command, program)
            job.start()
            self._jobs[Path(work_dir).resolve()] = job
            return job

    def active(self) -> TrainingJob | None:
        return next((job for job in self._jobs.values() if job.running), None)

    def get(self, work_dir: str | Path) -> TrainingJob | None:
        return self._jobs.get(Path(work_dir).resolve())

    def shutdown(self, timeout: float = 60.0) -> None:
        """Stop every run (saving a checkpoint) and wait for them: called when the board exits."""
        for job in list(self._jobs.values()):
            job.stop()
        for job in list(self._jobs.values()):
            job.terminate(timeout)


def _write_record(work_dir: Path, record: dict) -> None:
    tmp = work_dir / f".{RECORD_NAME}.tmp"
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, work_dir / RECORD_NAME)


def _read_record(work_dir: Path) -> dict:
    try:
        return json.loads((Path(work_dir) / RECORD_NAME).read_text())
    except (OSError, ValueError):
        return {}


# ----------------------------------------------------------------------------- reading a work dir
@dataclass
class Progress:
    """Where a run is, from its log lines.

    Attributes:
        iter: Iterations done (the last logged or saved one).
        total: Iterations the run will do, once the first log line says so.
        eta: mmengine's estimate of the time left.
        tokens_per_sec: Tokens per second per device at the last log line.
        loss: The last logged loss.
    """

    iter: int = 0
    total: int | None = None
    eta: str | None = None
    tokens_per_sec: float | None = None
    loss: float | None = None


def log_path(work_dir: str | Path) -> Path | None:
    """The board's captured output of the run, else mmengine's newest log in the work dir."""
    work_dir = Path(work_dir)
    if (work_dir / LOG_NAME).is_file():
        return work_dir / LOG_NAME
    logs = sorted(work_dir.glob("*/*.log"))
    return logs[-1] if logs else None


def log_tail(work_dir: str | Path, lines: int = 30, max_bytes: int = 1 << 18, width: int | None = None) -> str:
    """The last ``lines`` lines of the run's log, each cut to ``width`` characters when given."""
    path = log_path(work_dir)
    if path is None:
        return ""
    with open(path, "rb") as handle:
        handle.seek(max(0, path.stat().st_size - max_bytes))
        text = handle.read().decode("utf-8", errors="replace")
    tail = text.splitlines()[-lines:]
    if width:
        tail = [line if len(line) <= width else line[: width - 1] + "…" for line in tail]
    return "\n".join(tail)


def read_progress(work_dir: str | Path, finished: bool = False) -> Progress:
    """Progress from the log; a ``finished`` run is at its last iteration."""
    progress = Progress()
    for line in log_tail(work_dir, lines=100_000, max_bytes=1 << 22).splitlines():
        found = ITER_LINE.search(line)
        if found:
            progress.iter, progress.total = int(found.group(1)), int(found.group(2))
            values = dict(FIELD.findall(found.group(3)))
            progress.eta = values.get("eta")
            progress.tokens_per_sec = _float(values.get("tokens_per_sec"))
            progress.loss = _float(values.get("loss"))
        saved = SAVED_LINE.search(line)
        if saved:
            progress.iter = max(progress.iter, int(saved.group(1)))
    if finished and progress.total:
        progress.iter, progress.eta = progress.total, "0:00:00"
    return progress


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def loss_points(work_dir: str | Path) -> list[tuple[int, float]]:
    """(step, loss) from every ``vis_data/scalars.json`` of the run, oldest first; a resumed run's
    later values replace the earlier ones of the same step."""
    points: dict[int, float] = {}
    for path in sorted(Path(work_dir).glob("*/vis_data/scalars.json")):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # the line being written right now
            if "loss" in row and "step" in row:
                points[int(row["step"])] = float(row["loss"])
    return sorted(points.items())


def run_config(work_dir: str | Path) -> Path | None:
    """The resolved config ``xtune train`` saved in the work dir."""
    found = sorted(Path(work_dir).glob("*.py"))
    return found[0] if found else None


def run_status(work_dir: str | Path, job: TrainingJob | None = None) -> str:
    """``running``, ``finished``, ``stopped`` (saved, can resume), ``failed (exit N)`` or ``unknown``."""
    work_dir = Path(work_dir)
    if job is not None and job.running:
        return "running"
    record = _read_record(work_dir)
    code = record.get("returncode")
    if code == 0:
        return "finished"
    if code is not None:
        if not (record.get("stopped") or "Resume with" in log_tail(work_dir, 5)):
            return f"failed (exit {code})"
        return "stopped" if last_checkpoint(work_dir) else "stopped before its first checkpoint"
    if record:  # started by a board that is gone
        return "unknown"
    if (work_dir / "throughput.json").is_file():
        return "finished"
    return "stopped" if last_checkpoint(work_dir) else "unknown"


def summary(work_dir: str | Path) -> dict:
    """A finished (or stopped) run at a glance: its last loss, speed, checkpoint and eval answers."""
    work_dir = Path(work_dir)
    points = loss_points(work_dir)
    result: dict = {"work_dir": str(work_dir), "status": run_status(work_dir)}
    if points:
        result.update(last_logged_step=points[-1][0], last_logged_loss=round(points[-1][1], 4))
    throughput = work_dir / "throughput.json"
    if throughput.is_file():
        data = json.loads(throughput.read_text())
        result.update(tokens_per_sec=data.get("tokens_per_sec"), seconds=data.get("seconds"))
    result["last_checkpoint"] = last_checkpoint(work_dir)
    answers = work_dir / "eval_chat.jsonl"
    if answers.is_file():
        rows = [json.loads(line) for line in answers.read_text().splitlines() if line.strip()]
        result["eval_answers"] = {row["prompt"]: row["answer"] for row in rows}
    return result


def list_runs(root: str | Path) -> list[Path]:
    """Work dirs under ``root`` (one level down), newest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = [
        path
        for path in root.iterdir()
        if path.is_dir()
        and ((path / LOG_NAME).exists() or (path / POINTER_NAME).exists() or any(path.glob("*/vis_data")))
    ]
    return sorted(runs, key=lambda path: path.stat().st_mtime, reverse=True)
