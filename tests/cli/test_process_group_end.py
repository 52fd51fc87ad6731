"""``xtune train`` destroys the process group it started before the process exits, and only that one.

Left to the interpreter's teardown, gloo's worker threads could still be releasing the last
collective's work while Python finalized, and a rank that had trained fine aborted with "terminate called
without an active exception" (see ``end_process_group`` in xtune/engine/process_group.py). After a normal
end every rank meets at a barrier first; after an error there is none (the other ranks may still be
training), the group is destroyed all the same and the error reaches the exit status. Most runs here are
one rank under ``--launcher pytorch`` (gloo on CPU), in this process, so the group's state can be read
after; the last is two rank processes of which one fails.
"""

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch.distributed as dist

from xtune.errors import ConfigError
from xtune.testing.training import rank_command, sgd_parity_options, train

LORA = "tiny_llama_lora_identity_e3"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def one_rank(monkeypatch):
    """The environment of one torchrun worker; a group left behind by a failing test is removed."""
    port = _free_port()
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MASTER_PORT", str(port))
    monkeypatch.delenv("NPROC_PER_NODE", raising=False)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # mmengine sets them for distributed runs: restored after
        monkeypatch.setenv(key, "1")
    yield port
    if dist.is_initialized():
        dist.destroy_process_group()


def _options(model, data) -> dict:
    return {**sgd_parity_options(model, data, False), "max_epochs": 1}


def _native_threads() -> int:
    """This process's threads that Python did not start (gloo's workers among them)."""
    return len(os.listdir("/proc/self/task")) - threading.active_count()


def test_a_run_destroys_the_process_group_it_started(tiny_llama, alpaca_file, tmp_path, one_rank, monkeypatch):
    started = []
    init = dist.init_process_group

    def record(*args, **kwargs):
        init(*args, **kwargs)
        started.append((kwargs, _native_threads()))

    monkeypatch.setattr(dist, "init_process_group", record)
    work = tmp_path / "w"
    assert train(LORA, work, _options(tiny_llama, alpaca_file), ["--launcher", "pytorch"]) == 0
    assert [kwargs for kwargs, _ in started] == [{"backend": "gloo"}]  # trained in a gloo group it started
    assert (work / "last_checkpoint").is_file()
    assert not dist.is_initialized()  # and it is gone before the process ends
    # with its threads: none is left to finish a collective's work while Python finalizes
    assert _native_threads() <= started[0][1] - 2  # gloo runs 2 worker threads per group


def test_a_group_started_by_the_caller_is_left_to_it(tiny_llama, alpaca_file, tmp_path, one_rank):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{one_rank}", rank=0, world_size=1)
    group = dist.group.WORLD
    assert train(LORA, tmp_path / "w", _options(tiny_llama, alpaca_file), ["--launcher", "pytorch"]) == 0
    assert dist.is_initialized() and dist.group.WORLD is group


class _FailOnce:
    """Makes the hook below raise ``error`` at the ``at``-th training iteration of this process."""

    error: type[BaseException] = ConfigError
    at = 3


def _failing_hook():
    from mmengine.hooks import Hook

    from xtune.registry import HOOKS

    @HOOKS.register_module(force=True)
    class FailOnceHook(Hook):
        """Raises mid-training, as a hook that finds a user error does."""

        def __init__(self) -> None:
            self.seen = 0

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            self.seen += 1
            if self.seen == _FailOnce.at:
                EVENTS.append("raised")
                raise _FailOnce.error(f"injected failure at iteration {self.seen}")


EVENTS: list[str] = []
STARTED_WITH: list[int] = []  # the native threads once the run's group had started


@pytest.fixture
def recorded(monkeypatch):
    """Records the process-group calls (barrier, destroy) in order, with the hook's failure between them."""
    EVENTS.clear()
    init = dist.init_process_group

    def started(*args, **kwargs):
        init(*args, **kwargs)
        STARTED_WITH.append(_native_threads())

    monkeypatch.setattr(dist, "init_process_group", started)
    STARTED_WITH.clear()
    for name in ("barrier", "destroy_process_group"):
        call = getattr(dist, name)

        def record(*args, _call=call, _name=name, **kwargs):
            EVENTS.append(_name)
            return _call(*args, **kwargs)

        monkeypatch.setattr(dist, name, record)
    return EVENTS


def test_a_normal_end_waits_for_every_rank_then_destroys(tiny_llama, alpaca_file, tmp_path, one_rank, recorded):
    assert train(LORA, tmp_path / "w", _options(tiny_llama, alpaca_file), ["--launcher", "pytorch"]) == 0
    assert recorded[-2:] == ["barrier", "destroy_process_group"] and not dist.is_initialized()


@pytest.mark.parametrize("error", [ConfigError, RuntimeError], ids=["user_error", "exception"])
def test_after_an_error_the_group_is_destroyed_without_a_barrier(
    tiny_llama, alpaca_file, tmp_path, one_rank, recorded, monkeypatch, capsys, error
):
    monkeypatch.setattr(_FailOnce, "error", error)
    _failing_hook()
    options = {**_options(tiny_llama, alpaca_file), "custom_hooks": [{"type": "FailOnceHook"}]}
    if error is ConfigError:
        assert train(LORA, tmp_path / "w", options, ["--launcher", "pytorch"]) == 2
        assert "xtune: error: injected failure at iteration 3" in capsys.readouterr().err
    else:
        with pytest.raises(RuntimeError, match="injected failure at iteration 3") as raised:
            train(LORA, tmp_path / "w", options, ["--launcher", "pytorch"])
        assert "after_train_iter" in str(raised.traceback[-1])  # the traceback still says where
    # a barrier now could wait forever for ranks still training: the group is destroyed without one
    assert recorded[recorded.index("raised") :] == ["raised", "destroy_process_group"]
    assert not dist.is_initialized()
    # gloo's threads are joined before the error reaches the caller
    assert len(STARTED_WITH) == 1 and _native_threads() <= STARTED_WITH[0] - 2


# One rank of a two-rank run, started directly (no launcher that would stop the other rank for it): on
# rank 1 the hook above raises a ConfigError, on rank 0 a hook of the same name does nothing.
RANK_SCRIPT = """
import atexit, os, sys
import torch.distributed as dist
from tests.cli import test_process_group_end as here
from xtune.cli import main

atexit.register(lambda: print("group at exit:", "running" if dist.is_initialized() else "gone", file=sys.stderr))

if os.environ["RANK"] == "1":
    here._failing_hook()
else:
    from mmengine.hooks import Hook
    from xtune.registry import HOOKS
    HOOKS.register_module(name="FailOnceHook", module=type("FailOnceHook", (Hook,), {}))
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_when_one_rank_fails_every_rank_exits_non_zero(tiny_llama, alpaca_file, tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    options = {**_options(tiny_llama, alpaca_file), "batch_size": 1, "custom_hooks": [{"type": "FailOnceHook"}]}
    command = [sys.executable, str(script), *rank_command(LORA, tmp_path / "w", options, ["--launcher", "pytorch"])[3:]]
    env = {k: v for k, v in os.environ.items() if k not in ("NPROC_PER_NODE", "XTUNE_LOCKED_WORK_DIR")}
    env.update(WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), OMP_NUM_THREADS="1")
    root = str(Path(__file__).resolve().parents[2])  # `tests.cli` for the rank processes
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    logs = [tmp_path / f"rank{rank}.err" for rank in (0, 1)]
    ranks = []
    for rank, log in enumerate(logs):
        with log.open("w") as err:
            ranks.append(subprocess.Popen(command, env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)}, stderr=err))
    ended: dict[int, float] = {}
    deadline = time.monotonic() + 300
    while len(ended) < 2 and time.monotonic() < deadline:
        ended.update(
            {rank: time.monotonic() for rank, p in enumerate(ranks) if rank not in ended and p.poll() is not None}
        )
        time.sleep(0.1)
    for process in ranks:
        if process.poll() is None:
            process.kill()
    errs = [log.read_text() for log in logs]
    assert len(ended) == 2, f"rank(s) {[r for r in (0, 1) if r not in ended]} still running after 300 s: {errs}"
    assert "xtune: error: injected failure at iteration 3" in errs[1], errs[1][-3000:]
    assert ranks[1].returncode == 2, errs[1][-3000:]
    # rank 0 learns of it at its next collective, which fails at once: an error of its own, soon after
    assert ranks[0].returncode == 1 and "Connection closed by peer" in errs[0], errs[0][-3000:]
    assert abs(ended[0] - ended[1]) < 60
    for err in errs:  # each rank destroyed its group before Python began to finalize, and none aborted
        assert "group at exit: gone" in err and "terminate called" not in err, err[-3000:]
