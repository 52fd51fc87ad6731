"""The process group of one ``xtune train`` run: started for CPU workers, ended before Python exits.

A run ends the groups it started (none existed before it), after a normal end with a barrier first and
after an error without one; a group the caller started is left to the caller. Only torch's public
``torch.distributed`` API is used.
"""

import gc
import sys

import torch
import torch.distributed as dist


def process_group_running() -> bool:
    """Whether this process is in a torch.distributed process group."""
    return dist.is_available() and dist.is_initialized()


def end_process_group(started_here: bool, after_error: bool = False) -> None:
    """Destroy the process groups this run started, before Python exits; after a normal end, wait for
    every rank first.

    Without this, a rank could abort after a run that succeeded ("terminate called without an active
    exception", exit -6): a gloo worker thread drops its reference to a finished collective's work a moment
    after the main thread has moved on; when that is the last reference, the work's destructor releases a
    tensor Python also holds, which takes the GIL; if the main thread has begun finalizing by then, Python
    ends the thread (pthread_exit) and the unwinding through that noexcept destructor calls std::terminate.
    ``destroy_process_group`` joins gloo's threads while the interpreter is still whole, as torch's
    documentation asks of every trainer; the barrier first makes sure no rank tears its connections down
    while another is still inside a collective. A group's threads end when its last reference goes: the
    model (DDP's reducer, DeepSpeed's engine) is collected first, so that the last reference is the one
    held here, whose release lets go of the GIL while it waits for the threads (torch's Python binding does
    that), and a thread still finishing a work can take the GIL.

    After an error (``after_error``) there is no barrier: the other ranks may still be training, or inside
    another collective, and would never meet it. Destroying the group closes this rank's connections, so
    theirs fail instead of waiting; the error goes on to a non-zero exit, which the launcher sees.
    """
    if not started_here or not process_group_running():
        return
    # The groups whose last Python references are dropped below: the world (DDP's reducer holds it from
    # C++) and the sequence-parallel group a run may have made. Others are released by their owners.
    held = [dist.group.WORLD]
    sequence_parallel = sys.modules.get("xtune.model.sequence_parallel")
    if sequence_parallel is not None:
        held += sequence_parallel.process_groups()
    try:
        if not after_error:
            dist.barrier()
        ds_comm = sys.modules.get("deepspeed.comm")
        if ds_comm is not None and ds_comm.is_initialized():
            ds_comm.destroy_process_group()  # also drops DeepSpeed's references to the groups (sequence parallel)
        else:
            dist.destroy_process_group()
    except (RuntimeError, ValueError) as exc:  # torch's DistError is a RuntimeError
        if not after_error:
            raise
        # the run's own error is the one to report; the groups end with the process
        print(f"xtune: note: the process group was not destroyed cleanly after the error: {exc}", file=sys.stderr)
    if sequence_parallel is not None:
        sequence_parallel.reset()
    gc.collect()  # the finished run's objects, in reference cycles, and with them the model's references
    del held  # the last references: gloo's threads are joined here, while Python is whole


def start_cpu_process_group(cfg) -> None:
    """Start the gloo process group of a CPU-only worker; mmengine's own start calls torch.cuda.set_device,
    which a CPU-only torch lacks (it starts none when a group exists)."""
    if cfg.launcher != "pytorch" or torch.cuda.is_available() or dist.is_initialized():
        return
    if cfg.get("strategy"):
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")  # DeepSpeed's comm layer wraps the torch group
    else:
        dist.init_process_group(backend="gloo")
