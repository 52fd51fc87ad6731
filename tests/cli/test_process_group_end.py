"""``xtune train`` destroys the process group it started before the process exits, and only that one.

Left to the interpreter's teardown, gloo's worker threads could still be releasing the last
collective's work while Python finalized, and a rank that had trained fine aborted with "terminate called
without an active exception" (see ``_end_process_group`` in xtune/cli/train.py). Both runs here are one
rank under ``--launcher pytorch`` (gloo on CPU), in this process, so the group's state can be read after.
"""

import os
import socket
import threading

import pytest
import torch.distributed as dist

from xtune.testing.training import sgd_parity_options, train

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
