"""Training children and work-dir reading (no browser)."""

import json
import os
import sys
import time

import pytest

from xtune.board.runs import Jobs, TrainingJob, list_runs, log_tail, loss_points, read_progress, run_status
from xtune.errors import XtuneError

# A "run" that starts a worker of its own (as torchrun does), saves on SIGTERM like xtune and exits 2.
RUN = """
import os, signal, subprocess, sys, time
worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
open(sys.argv[1], "w").write(str(worker.pid))
def stop(signum, frame):
    print("stopped by signal 15; checkpoint saved. Resume with: xtune train CONFIG --resume auto", flush=True)
    sys.exit(2)
signal.signal(signal.SIGTERM, stop)
print("Iter(train) [3/40]  lr: 1e-3  eta: 0:01:02  time: 0.1  loss: 2.5  tokens_per_sec: 1234.5", flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_for(predicate, seconds: float = 30.0) -> None:
    deadline = time.time() + seconds
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.1)


def test_stopping_reaches_the_whole_process_group_and_leaves_a_resumable_run(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(RUN)
    pid_file = tmp_path / "worker.pid"
    jobs = Jobs()
    job = jobs.start([str(script), str(pid_file)], tmp_path / "run", {}, "xtune train demo", [sys.executable])
    _wait_for(lambda: pid_file.exists() and pid_file.read_text() and "Iter(train)" in log_tail(tmp_path / "run"))
    with pytest.raises(XtuneError, match="run is still training"):
        jobs.start(["x"], tmp_path / "other", {}, "x")
    progress = read_progress(tmp_path / "run")
    assert (progress.iter, progress.total, progress.eta, progress.loss, progress.tokens_per_sec) == (
        3,
        40,
        "0:01:02",
        2.5,
        1234.5,
    )
    assert run_status(tmp_path / "run", job) == "running"
    worker = int(pid_file.read_text())
    jobs.shutdown(timeout=20)
    assert job.process.returncode == 2  # reaped: no zombie left
    _wait_for(lambda: not _alive(worker))  # the worker got the signal too
    assert run_status(tmp_path / "run", job) == "stopped before its first checkpoint"
    (tmp_path / "run" / "iter_3.pth").write_bytes(b"")
    (tmp_path / "run" / "last_checkpoint").write_text(str(tmp_path / "run" / "iter_3.pth"))
    assert run_status(tmp_path / "run", job) == "stopped"
    assert json.loads((tmp_path / "run" / "board_run.json").read_text())["stopped"] is True
    assert log_tail(tmp_path / "run").startswith("$ xtune train demo")
    assert list_runs(tmp_path) == [tmp_path / "run"]


def test_a_crashed_run_shows_its_exit_status_and_last_lines(tmp_path):
    job = TrainingJob(
        ["train", "no_such_config_anywhere"], tmp_path / "crash", {}, "xtune train no_such_config_anywhere"
    )
    job.start()
    job.process.wait(120)
    assert job.poll() == 2
    assert run_status(tmp_path / "crash", job) == "failed (exit 2)"
    assert "xtune: error: no config named 'no_such_config_anywhere'" in log_tail(tmp_path / "crash")


def test_loss_points_join_every_scalars_file_and_a_resume_replaces_its_steps(tmp_path):
    for stamp, rows in (("20260101_000000", [(5, 3.0), (10, 2.0)]), ("20260101_000100", [(10, 1.9), (15, 1.5)])):
        folder = tmp_path / stamp / "vis_data"
        folder.mkdir(parents=True)
        lines = [json.dumps({"loss": loss, "step": step, "lr": 0.1}) for step, loss in rows]
        (folder / "scalars.json").write_text("\n".join(lines) + '\n{"loss": 1.')  # a line being written
    assert loss_points(tmp_path) == [(5, 3.0), (10, 1.9), (15, 1.5)]


def test_a_finished_run_reads_as_at_its_last_iteration(tmp_path):
    (tmp_path / "board_train.log").write_text(
        "Iter(train) [50/51]  eta: 0:00:01  loss: 1.0\nSaving checkpoint at 51 iterations\n"
    )
    assert read_progress(tmp_path).iter == 51
    assert (read_progress(tmp_path, finished=True).iter, read_progress(tmp_path, finished=True).total) == (51, 51)


def test_the_python_running_the_board_runs_the_children():
    assert TrainingJob(["train"], "x").program == [sys.executable, "-m", "xtune"]
