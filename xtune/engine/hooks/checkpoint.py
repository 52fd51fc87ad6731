"""Checkpoints that survive crashes: write, then point ``last_checkpoint`` at it, then rotate.

mmengine's CheckpointHook deletes the oldest checkpoint before writing the new one, so a crash during
the write can leave no valid checkpoint at all. Here the new checkpoint is written to a temporary name
and renamed (by :mod:`xtune.engine.checkpointing`, for files and DeepSpeed folders alike),
``last_checkpoint`` is replaced atomically (:func:`xtune.checkpoint.files.write_pointer`),
and only then are old checkpoints removed. A state with a non-finite loss or weights is never saved,
so ``last_checkpoint`` only ever names a finite checkpoint.
"""

import math
import os.path as osp

import torch
from mmengine.dist import all_reduce, is_distributed, is_main_process
from mmengine.hooks import CheckpointHook

from xtune.checkpoint.files import write_pointer
from xtune.registry import HOOKS


def nonfinite_problem(runner) -> str | None:
    """What makes the current state unfit to save, the same answer on every rank: a non-finite loss
    (unless ``nonfinite='skip'`` dropped that step) or non-finite trainable weights; None when fine."""
    try:
        loss = float(runner.message_hub.get_scalar("train/loss").current())
    except KeyError:
        loss = 0.0  # nothing trained yet
    skipping = getattr(runner.train_loop, "nonfinite", "stop") == "skip"
    model = runner.model.module if hasattr(runner.model, "module") else runner.model
    weights_bad = False
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                local = getattr(param, "ds_tensor", param)  # ZeRO-3: this rank's partition
                if local.numel() and not bool(torch.isfinite(local).all()):
                    weights_bad = True
                    break
    flags = torch.tensor([float(not skipping and not math.isfinite(loss)), float(weights_bad)])
    if is_distributed():
        all_reduce(flags, op="sum")
    if flags[0] > 0:
        return f"the loss became {loss}" if not math.isfinite(loss) else "the loss became non-finite on another rank"
    if flags[1] > 0:
        return "the trainable weights became non-finite (NaN/Inf)"
    return None


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """A CheckpointHook whose saves and rotation never leave the work dir without a valid checkpoint."""

    def _save_checkpoint_with_step(self, runner, step, meta):
        from xtune.engine.loop import nonfinite_stop

        problem = nonfinite_problem(runner)
        if problem:  # never saved, so last_checkpoint keeps naming a finite checkpoint
            raise nonfinite_stop(runner, problem)
        filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, filename)
        runner.message_hub.update_info("last_ckpt", self.last_ckpt)
        stale = []
        if self.max_keep_ckpts > 0 and (not self.keep_ckpt_ids or self.keep_ckpt_ids[-1] != step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                stale.append(self.keep_ckpt_ids.popleft())
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info("keep_ckpt_ids", list(self.keep_ckpt_ids))
        runner.save_checkpoint(
            self.out_dir,
            filename,
            self.file_client_args,
            save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler,
            meta=meta,
            by_epoch=self.by_epoch,
            backend_args=self.backend_args,
            **self.args,
        )
        if not is_main_process():
            return
        write_pointer(runner.work_dir, self.last_ckpt)
        for old in stale:
            path = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(old))
            if osp.isdir(path):
                self.file_backend.rmtree(path)
            elif osp.isfile(path):
                self.file_backend.remove(path)

    def save_now(self, runner) -> None:
        """Save at the current iteration, outside the regular interval (on a stop signal)."""
        meta = {"epoch": runner.epoch, "iter": runner.iter}
        self._save_checkpoint_with_step(runner, runner.iter, meta)
