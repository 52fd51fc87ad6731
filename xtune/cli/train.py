"""``xtune train``: build the Runner from a config and train."""

import argparse
import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

from xtune.cli.configs import add_cfg_options
from xtune.config import find_config, load_config, parse_cfg_options
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
        "--launcher",
        choices=["none", "pytorch", "slurm"],
        default="none",
        help="set by an outer launcher (torchrun, srun); xtune starts workers itself otherwise",
    )
    add_cfg_options(p)
    p.set_defaults(func=train)


def _wants_workers(args: argparse.Namespace) -> bool:
    nproc = int(os.environ.get("NPROC_PER_NODE", "1"))
    nnodes = int(os.environ.get("NNODES", "1"))
    return args.launcher == "none" and (nproc > 1 or nnodes > 1) and "LOCAL_RANK" not in os.environ


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_workers(argv: list[str]) -> int:
    """Start ``NPROC_PER_NODE`` workers on this node with torchrun, run by this Python."""
    env = os.environ
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={env.get('NPROC_PER_NODE', '1')}",
        f"--nnodes={env.get('NNODES', '1')}",
        f"--node_rank={env.get('NODE_RANK', '0')}",
        f"--master_addr={env.get('ADDR', env.get('MASTER_ADDR', '127.0.0.1'))}",
        f"--master_port={env.get('PORT', env.get('MASTER_PORT', _free_port()))}",
        "-m",
        "xtune",
        "train",
        *argv,
        "--launcher",
        "pytorch",
    ]
    return subprocess.call(command)


def prepare_config(args: argparse.Namespace):
    """The resolved config with the command line's work dir, seed, resume and launcher applied."""
    import torch

    path = find_config(args.config)
    cfg = load_config(path, parse_cfg_options(args.cfg_options))
    cfg.work_dir = args.work_dir or cfg.get("work_dir") or str(Path("work_dirs") / path.stem)
    # Unique per run: mmengine keys its logger and message hub by experiment name, and two runs in one
    # process within the same second would otherwise share them.
    cfg.experiment_name = f"{path.stem}_{time.strftime('%Y%m%d_%H%M%S')}_{os.getpid()}_{next(_RUN_IDS)}"
    if args.seed is not None:
        cfg.randomness["seed"] = args.seed
    cfg.launcher = args.launcher
    if not torch.cuda.is_available():
        cfg.env_cfg["dist_cfg"] = {"backend": "gloo"}
    try:
        import tensorboard  # noqa: F401

        cfg.visualizer["vis_backends"].append({"type": "TensorboardVisBackend"})
    except ImportError:
        pass
    if args.resume:
        cfg.resume, cfg.load_from = _resume_target(args.resume, cfg.work_dir)
    return cfg


def _resume_target(resume: str, work_dir: str) -> tuple[bool, str | None]:
    from xtune.engine.checkpoints import newest_valid_checkpoint

    if resume == "auto":
        found = newest_valid_checkpoint(work_dir) if Path(work_dir).is_dir() else None
        if found is None:
            print(f"xtune: no checkpoint in {work_dir}; starting from scratch", file=sys.stderr)
            return False, None
        print(f"xtune: resuming from {found}", file=sys.stderr)
        return True, found
    if not Path(resume).exists():
        raise ConfigError(f"--resume {resume}: no such checkpoint. Use --resume auto or a path to an iter_*.pth.")
    return True, resume


def train(args: argparse.Namespace) -> int:
    if _wants_workers(args):
        return launch_workers(args.argv[1:])
    cfg = prepare_config(args)
    import xtune.engine  # noqa: F401  (registers the runner, loop and hooks)
    from xtune.registry import RUNNERS

    runner = RUNNERS.build(cfg)
    runner.train()
    return 0
