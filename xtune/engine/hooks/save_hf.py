"""Write a Hugging Face model or PEFT adapter into the work dir when training ends."""

import os.path as osp

from mmengine.dist import barrier
from mmengine.hooks import Hook
from mmengine.logging import print_log

from xtune.checkpoint.files import read_pointer
from xtune.registry import HOOKS


@HOOKS.register_module()
class SaveHFHook(Hook):
    """After training, convert the last checkpoint (a .pth file or a ZeRO folder written by any number
    of ranks) into ``WORK_DIR/hf`` exactly as ``xtune convert pth_to_hf`` would.

    Args:
        enabled: Off by default (the ``save_hf_at_end`` knob turns it on).
        save_dir: Folder name inside the work dir.
    """

    priority = "LOWEST"  # after the checkpoint hook has written the last checkpoint

    def __init__(self, enabled: bool = False, save_dir: str = "hf") -> None:
        self.enabled = enabled
        self.save_dir = save_dir

    def after_train(self, runner) -> None:
        if not self.enabled:
            return
        barrier()  # every rank's part of the last checkpoint is on disk
        if runner.rank == 0:
            from xtune.convert.pth_to_hf import pth_to_hf

            checkpoint = read_pointer(runner.work_dir)
            config = osp.join(runner.work_dir, osp.basename(runner.cfg.filename))
            saved = pth_to_hf(config, checkpoint, osp.join(runner.work_dir, self.save_dir), overwrite=True)
            print_log(f"saved the trained model for Hugging Face in {saved}", logger="current")
        barrier()
