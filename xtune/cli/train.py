"""``xtune train``: build the Runner from a config and train."""

import argparse
import itertools
import os
import shlex
import subprocess
import sys
import time
import traceback
from pathlib import Path

from xtune.cli.configs import add_cfg_options
from xtune.config import check_training, find_config, load_config, parse_cfg_options
from xtune.errors import ConfigError

_RUN_IDS = itertools.count()


def add_parser(sub, name: str, text: str) -> None:
    p = sub.add_parser(
        name, help=text, description=f"{text}.\n\nExample: xtune train tiny_llama_lora_identity_e3 --work-dir runs/demo"
    )
    p.add_argument("config", help="config name (see xtune list-cfg) or path")
    p.add_argument("--work-dir", help="where logs and checkpoints go (default ./work_dirs/<config name>)")
    p.add_argument("--deepspeed", help="zero1, zero2, zero2_offload, zero3, zero3_offload, or a JSON path")
    p.add_argument("--resume", help="'auto' (newest checkpoint in the work dir, if any) or a checkpoint path")
    p.add_argument("--seed", type=int, help="random seed (default: the config's seed)")
    p.add_argument(
        "--allow-changed-data",
        action="store_true",
        help="resume although batch_size, accumulative_counts, the number of ranks or the data differ from "
        "the checkpoint's run (refused otherwise: the resumed run would not continue the same schedule)",
    )
    p.add_argument(
        "--launcher",
        choices=["none", "pytorch", "slurm"],
        default="none",
        help="set by an outer launcher (torchrun, srun); xtune starts workers itself otherwise",
    )
    add_cfg_options(p)
    p.set_defaults(func=train)


def _env_count(name: str, env: dict | None = None) -> int:
    """A whole-number launcher setting (``NPROC_PER_NODE``, ``NNODES``) from the environment, default 1.

    Raises:
        ConfigError: It is set to something else than a whole number >= 1.
    """
    text = (os.environ if env is None else env).get(name, "1")
    if not text.strip().isdigit() or int(text) < 1:
        raise ConfigError(f"{name}={text!r}: expected a whole number >= 1 (e.g. {name}=2), or leave it unset.")
    return int(text)


def _wants_workers(args: argparse.Namespace) -> bool:
    nproc = _env_count("NPROC_PER_NODE")
    nnodes = _env_count("NNODES")
    return args.launcher == "none" and (nproc > 1 or nnodes > 1) and "LOCAL_RANK" not in os.environ


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _slurm_first_host() -> str | None:
    """The first host of a slurm allocation (node 0's address), when slurm names one."""
    nodes = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
    if not nodes:
        return None
    try:
        hosts = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return nodes.split(",")[0] if "[" not in nodes else None
    return hosts.stdout.split()[0] if hosts.stdout.split() else None


def launch_settings(env: dict | None = None) -> dict[str, str]:
    """torchrun's node settings from ``NPROC_PER_NODE``, ``NNODES``, ``NODE_RANK``, ``ADDR``/``MASTER_ADDR`` and
    ``PORT``/``MASTER_PORT``. With several nodes inside a slurm job (one ``xtune train`` per node, e.g. by
    ``srun --ntasks-per-node=1``), the node rank and node 0's address default to slurm's.

    Raises:
        ConfigError: Several nodes but no address or port of node 0 to meet at.
    """
    env = dict(os.environ if env is None else env)
    _env_count("NPROC_PER_NODE", env)
    nnodes = str(_env_count("NNODES", env))
    addr = env.get("ADDR") or env.get("MASTER_ADDR")
    node_rank = env.get("NODE_RANK")
    if int(nnodes) > 1:
        addr = addr or _slurm_first_host()
        node_rank = node_rank or env.get("SLURM_NODEID")
    port = env.get("PORT") or env.get("MASTER_PORT")
    if int(nnodes) > 1 and not (addr and port):
        raise ConfigError(
            f"NNODES={nnodes}: every node must meet at node 0; set ADDR (or MASTER_ADDR) to node 0's address and "
            "PORT (or MASTER_PORT) to a free port on it, the same on every node, with NODE_RANK=0..NNODES-1."
        )
    return {
        "nproc_per_node": env.get("NPROC_PER_NODE", "1"),
        "nnodes": nnodes,
        "node_rank": node_rank or "0",
        "master_addr": addr or "127.0.0.1",
        "master_port": str(port or _free_port()),
    }


def launch_workers(argv: list[str], env: dict | None = None) -> int:
    """Start ``NPROC_PER_NODE`` workers on this node with torchrun, run by this Python; their status
    (128 + the signal number when a stop signal was forwarded to them, see :mod:`xtune.cli.workers`)."""
    from xtune.cli.workers import run_workers

    settings = launch_settings()
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *(f"--{key}={value}" for key, value in settings.items()),
        "-m",
        "xtune",
        "train",
        *argv,
        "--launcher",
        "pytorch",
    ]
    return run_workers(command, env=env)


# Set by the launcher for its workers: the work dir it holds the lock of (workers then take none).
LOCKED_ENV = "XTUNE_LOCKED_WORK_DIR"


def work_dir_of(args: argparse.Namespace, cfg, path: Path) -> str:
    """The run's work dir: ``--work-dir``, the config's ``work_dir``, or ``work_dirs/<config name>``."""
    return args.work_dir or cfg.get("work_dir") or str(Path("work_dirs") / path.stem)


def resume_command(args: argparse.Namespace, work_dir: str) -> str:
    """The command that resumes this run: what was typed, with ``--resume auto`` and the work dir."""
    argv, skip = [], False
    for item in args.argv[1:]:
        if skip:
            skip = False
            continue
        if item in ("--resume", "--launcher"):
            skip = True
            continue
        if item.startswith(("--resume=", "--launcher=")):
            continue
        argv.append(item)
    if args.work_dir is None:
        argv[1:1] = ["--work-dir", work_dir]
    prefix = " ".join(f"{k}={os.environ[k]}" for k in ("NPROC_PER_NODE", "NNODES") if os.environ.get(k, "1") != "1")
    return " ".join(filter(None, [prefix, "xtune train", shlex.join(argv), "--resume auto"]))


def prepare_config(args: argparse.Namespace):
    """The resolved config with the command line's work dir, seed, resume and launcher applied."""
    import torch

    path = find_config(args.config)
    cfg = load_config(path, parse_cfg_options(args.cfg_options))
    cfg.work_dir = work_dir_of(args, cfg, path)
    # Unique per run: mmengine keys its logger and message hub by experiment name, and two runs in one
    # process within the same second would otherwise share them.
    cfg.experiment_name = f"{path.stem}_{time.strftime('%Y%m%d_%H%M%S')}_{os.getpid()}_{next(_RUN_IDS)}"
    if args.seed is not None:
        cfg.randomness["seed"] = args.seed
    cfg.launcher = args.launcher
    if not torch.cuda.is_available():
        cfg.env_cfg["dist_cfg"] = {"backend": "gloo"}
    if args.resume:
        cfg.resume, cfg.load_from = _resume_target(args.resume, cfg.work_dir)
    if args.deepspeed:
        _use_deepspeed(cfg, args.deepspeed)
    check_training(cfg)
    return cfg


def _check_deepspeed_arg(value: str) -> None:
    """Fail before starting workers (once, not once per rank) when ``--deepspeed`` names nothing.

    The common case is checked without importing the engine, which takes seconds.
    """
    from xtune.paths import CONFIG_DIR

    if (CONFIG_DIR / "deepspeed" / f"{value.removeprefix('deepspeed_')}.json").is_file() or Path(value).is_file():
        return
    from xtune.engine.deepspeed import find_deepspeed_config

    find_deepspeed_config(value)  # raises, listing the presets


def _use_deepspeed(cfg, name_or_path: str) -> None:
    """Switch ``cfg`` to DeepSpeed; report where the DeepSpeed JSON disagreed with the config."""
    from xtune.engine.deepspeed import use_deepspeed

    if cfg.launcher == "none":
        # One process without an outer launcher: DeepSpeed still wants a (one-rank) process group.
        for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
            os.environ.setdefault(key, value)
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        cfg.launcher = "pytorch"
    for note in use_deepspeed(cfg, name_or_path):
        _note(f"deepspeed: {note}")


def _note(message: str) -> None:
    """A message for the user, from the first worker only when there are several."""
    if os.environ.get("RANK", "0") == "0":
        print(f"xtune: {message}", file=sys.stderr)


def _resume_target(resume: str, work_dir: str) -> tuple[bool, str | None]:
    from xtune.engine.checkpoints import find_resume_checkpoint

    if resume == "auto":
        found, skipped = find_resume_checkpoint(work_dir) if Path(work_dir).is_dir() else (None, [])
        for path, reason in skipped:
            _note(f"--resume auto: skipping {path}: {reason}")
        if found is None and skipped:
            raise ConfigError(
                f"--resume auto: {work_dir} has {len(skipped)} checkpoint(s) but none loads (see above). Starting "
                "over would rotate them away: move them out of the work dir to start from scratch, or pass one "
                "with --resume PATH."
            )
        if found is None:
            _note(f"no checkpoint in {work_dir}; starting from scratch")
            return False, None
        _note(f"resuming from {found}")
        return True, found
    if not Path(resume).exists():
        raise ConfigError(
            f"--resume {resume}: no such checkpoint. Use --resume auto or a path to an iter_*.pth (file or folder)."
        )
    return True, resume


def train(args: argparse.Namespace) -> int:
    if args.deepspeed:
        _check_deepspeed_arg(args.deepspeed)
    from xtune.cli.workers import watch_parent
    from xtune.engine.lock import WorkDirLock

    watch_parent()
    if _wants_workers(args):
        # a bad config or option fails here, once, not in every worker
        path = find_config(args.config)
        cfg = load_config(path, parse_cfg_options(args.cfg_options))
        work_dir = work_dir_of(args, cfg, path)
        check_training(cfg, work_dir)
        lock = WorkDirLock(work_dir)
        if launch_settings()["node_rank"] == "0":  # one lock per job, on the first node
            _report_lock(lock.acquire())
        try:
            return launch_workers(args.argv[1:], env={**os.environ, LOCKED_ENV: str(Path(work_dir).resolve())})
        finally:
            lock.release()
    if os.environ.get(LOCKED_ENV):
        from xtune.cli.workers import die_with_parent

        die_with_parent()
    cfg = prepare_config(args)
    lock = WorkDirLock(cfg.work_dir)
    if os.environ.get(LOCKED_ENV) != str(Path(cfg.work_dir).resolve()) and os.environ.get("RANK", "0") == "0":
        _report_lock(lock.acquire())
    try:
        return _run(cfg, args)
    finally:
        lock.release()


def _report_lock(note: str | None) -> None:
    if note:
        _note(note)


def _run(cfg, args: argparse.Namespace) -> int:
    import xtune.engine  # noqa: F401  (registers the runner, loop and hooks)
    from xtune.engine.checkpoints import remove_temporary_files
    from xtune.engine.loop import TrainingInterrupted
    from xtune.engine.process_group import end_process_group, process_group_running, start_cpu_process_group

    if os.environ.get("RANK", "0") == "0":
        for removed in remove_temporary_files(cfg.work_dir):
            _note(f"removed {removed}, left by an interrupted save")
    # Whatever group exists once the runner is built (ours below, mmengine's or DeepSpeed's) is this run's
    # to end when none existed before it; one started by the caller is left to the caller.
    started_here = not process_group_running()
    try:
        start_cpu_process_group(cfg)
        stop = _train(cfg, args)
    except BaseException as exc:
        # The traceback's frames hold the runner and its model, and with them the process groups: let them
        # go (the traceback still prints) so that the groups end here, while Python is whole.
        _clear_frames(exc)
        end_process_group(started_here, after_error=True)
        raise
    # a normal end, or a stop signal: every rank saved the same step; any other stop is this rank's own
    end_process_group(started_here, after_error=stop is not None and stop.exit_status <= 128)
    if stop is None:
        return 0
    if os.environ.get("RANK", "0") != "0":
        return stop.exit_status  # rank 0 says it once
    if stop.resumable:
        raise TrainingInterrupted(f"{stop} Resume with: {resume_command(args, cfg.work_dir)}", stop.exit_status)
    raise stop


def _train(cfg, args: argparse.Namespace) -> "TrainingInterrupted | None":  # noqa: F821  (imported lazily)
    """Build the runner and train; the ``TrainingInterrupted`` that stopped the run, or None.

    The runner lives only in this frame: when it returns or raises, the run's objects (DDP's reducer,
    DeepSpeed's engine) can be collected before the process groups they hold are destroyed.
    """
    from xtune.engine.loop import TrainingInterrupted
    from xtune.registry import RUNNERS

    runner = RUNNERS.build(cfg)
    runner.allow_changed_data = bool(getattr(args, "allow_changed_data", False))
    try:
        runner.train()
    except TrainingInterrupted as exc:
        return exc.with_traceback(None)  # a one-line message; its frames would keep the run alive
    return None


def _clear_frames(exc: BaseException) -> None:
    """Drop the local variables of the finished frames in ``exc``'s traceback and those of its causes."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        traceback.clear_frames(exc.__traceback__)
        exc = exc.__cause__ or exc.__context__
