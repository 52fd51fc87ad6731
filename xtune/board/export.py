"""The Export tab: ``xtune convert pth_to_hf`` (and ``merge --verify``) for a run's checkpoint.

The conversions run as ``xtune convert`` child processes, the commands shown, their output streamed
to the page as progress.
"""

import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from xtune.board.form import LORA_TYPES
from xtune.board.runs import run_config
from xtune.errors import XtuneError


@dataclass
class ExportPlan:
    """Attributes:
    steps: ``xtune`` argument lists, run in order.
    output: The folder the last step writes (the one to use).
    """

    steps: list[list[str]]
    output: Path

    def commands(self) -> str:
        return "\n".join(shlex.join(["xtune", *step]) for step in self.steps)


def plan_export(
    work_dir: str | Path,
    checkpoint: str,
    out_dir: str,
    merge: bool = True,
    verify: bool = True,
    overwrite: bool = False,
) -> ExportPlan:
    """pth_to_hf into ``out_dir`` (an adapter for LoRA-type runs, a model otherwise), then for adapters
    (when ``merge``) a merge into the base model, to ``out_dir + '_merged'``.

    Raises:
        XtuneError: The run has no config or the checkpoint does not exist.
    """
    from xtune.config import load_config

    work_dir = Path(work_dir)
    config = run_config(work_dir)
    if config is None:
        raise XtuneError(f"{work_dir} has no config: it is not a training work dir (or the run never started).")
    if not checkpoint or not Path(checkpoint).exists():
        raise XtuneError(f"checkpoint '{checkpoint}' does not exist; pick one from {work_dir} (iter_*.pth).")
    if not out_dir:
        raise XtuneError("give an output folder.")
    cfg = load_config(config)
    extra = ["--overwrite"] if overwrite else []
    steps = [["convert", "pth_to_hf", str(config), str(checkpoint), out_dir, *extra]]
    output = Path(out_dir)
    if merge and cfg.model.get("finetune_type") in LORA_TYPES:
        output = Path(f"{out_dir}_merged")
        base = str(cfg.pretrained_model_name_or_path)
        steps.append(["convert", "merge", base, out_dir, str(output), *(["--verify"] if verify else []), *extra])
    return ExportPlan(steps, output)


def run_steps(plan: ExportPlan) -> Iterator[str]:
    """Run the steps one after another, yielding the output so far; stops at the first failure.

    Raises:
        XtuneError: A step failed; the message holds its last output lines.
    """
    log = ""
    for step in plan.steps:
        log += f"$ {shlex.join(['xtune', *step])}\n"
        yield log
        process = subprocess.Popen(
            [sys.executable, "-m", "xtune", *step],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        for line in process.stdout:
            log += line
            yield log
        if process.wait() != 0:
            tail = "\n".join(log.splitlines()[-8:])
            raise XtuneError(f"`xtune {step[0]} {step[1]}` failed (exit {process.returncode}):\n{tail}")
    yield log + f"done: {plan.output}\n"
