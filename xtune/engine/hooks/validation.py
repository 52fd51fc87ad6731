"""Validation loss during training: on ``val_data_path`` or a held-out ``val_size`` share of the data.

Every ``eval_steps`` optimizer steps (and at the end) the model's token loss over the validation rows
is computed exactly as in training (summed token losses over trained tokens, no dropout), logged as
``val/loss`` (terminal, log file, scalars.json, TensorBoard), written to ``WORK_DIR/val_loss.json`` and
drawn in ``loss_curve.png``. With ``save_best`` the weights of the lowest validation loss are kept in
``WORK_DIR/best_checkpoint.pth``.

Every rank evaluates all validation rows in the same order, so that sharded (ZeRO-3) forwards stay in
step; the validation set is meant to be small.
"""

from __future__ import annotations

import copy
import json
import os.path as osp

import torch
from mmengine.dist import broadcast, is_distributed
from mmengine.hooks import Hook
from torch.utils.data import DataLoader

from xtune.dataset.collate import count_trained_tokens, vision_collate_fn
from xtune.errors import ConfigError
from xtune.registry import DATASETS, HOOKS


@HOOKS.register_module()
class ValidationHook(Hook):
    """Computes the validation loss every ``eval_steps`` optimizer steps and at the end of training.

    Args:
        val_data_path: Validation data (any ``data_path`` form), read with the training data's settings.
        val_size: Or: the share of the training data held out (the training dataset must have the same).
        eval_steps: Optimizer steps between validations; 0: only at the end.
        save_best: Keep the weights of the lowest validation loss in ``best_checkpoint.pth``.
        batch_size: Rows per validation batch.
    """

    priority = "LOW"

    def __init__(
        self,
        val_data_path=None,
        val_size: float = 0.0,
        eval_steps: int = 0,
        save_best: bool = False,
        batch_size: int = 1,
    ) -> None:
        if val_data_path and val_size:
            raise ConfigError("give val_data_path or val_size, not both.")
        if not isinstance(eval_steps, int) or eval_steps < 0:
            raise ConfigError(f"eval_steps must be a whole number of optimizer steps >= 0, got {eval_steps!r}.")
        self.val_data_path, self.val_size = val_data_path, val_size
        self.eval_steps, self.save_best, self.batch_size = eval_steps, save_best, batch_size
        self.enabled = bool(val_data_path or val_size)
        self.history: dict[str, list] = {"iter": [], "loss": []}
        self.best = float("inf")
        self.loader = None

    def before_train(self, runner) -> None:
        if not self.enabled:
            return
        objective = (runner.cfg.get("model") or {}).get("objective") or {}
        stage = objective.get("type", "sft") if isinstance(objective, dict) else "sft"
        if stage not in ("sft", "pt"):
            raise ConfigError(
                f"val_data_path/val_size give a validation loss for the sft and pt stages; this config trains the "
                f"'{stage}' stage, whose metrics are logged per step instead. Unset val_data_path and val_size."
            )
        cfg = copy.deepcopy(runner.cfg.get("train_dataset") or runner.cfg.train_dataloader.dataset)
        if self.val_data_path:
            cfg.update(data_path=self.val_data_path, val_size=0.0, part="train")
        else:
            if cfg.get("val_size", 0.0) != self.val_size:
                raise ConfigError("val_size must be given to the training dataset too (train_dataset.val_size).")
            cfg.update(part="val")
        dataset = DATASETS.build(cfg)
        if not len(dataset):
            raise ConfigError("the validation data has no usable samples. Check val_data_path or val_size.")
        pad = dataset.tokenizer.pad_token_id or 0
        # vision_collate_fn is sft_collate_fn plus the items' images, when they have any
        self.loader = DataLoader(
            dataset, batch_size=self.batch_size, shuffle=False, collate_fn=lambda b: vision_collate_fn(b, pad)
        )
        runner.logger.info(f"validation: {len(dataset)} rows, every {self.eval_steps or 'end-of-training'} steps")

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        accumulate = runner.cfg.get("optim_wrapper", {}).get("accumulative_counts", 1) or 1
        every = self.eval_steps * accumulate
        if self.loader is not None and every and (runner.iter + 1) % every == 0 and runner.iter + 1 < runner.max_iters:
            self._validate(runner, runner.iter + 1)

    def after_train(self, runner) -> None:
        if self.loader is not None:
            self._validate(runner, runner.iter)  # the loop has counted the last iteration by now

    @torch.no_grad()
    def _validate(self, runner, step: int) -> None:
        model = runner.model.module if hasattr(runner.model, "module") else runner.model
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        loss_sum, tokens = 0.0, 0
        for batch in self.loader:
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            batch.pop("num_tokens", None)
            out = model(**batch, loss_scale=1.0, mode="loss")  # scale 1: the summed token loss
            loss_sum += float(out["loss"])
            tokens += count_trained_tokens(batch["labels"])
        model.train(was_training)
        loss = _agreed(loss_sum / max(tokens, 1))
        self.history["iter"].append(step)
        self.history["loss"].append(loss)
        runner.message_hub.update_scalar("val/loss", loss)
        runner.visualizer.add_scalars({"val/loss": loss}, step=step)
        runner.logger.info(f"validation at iteration {step}: loss {loss:.4f} over {tokens} tokens")
        if runner.rank == 0:
            with open(osp.join(runner.work_dir, "val_loss.json"), "w") as handle:
                json.dump(self.history, handle)
        if self.save_best and loss < self.best:
            self.best = loss
            runner.save_checkpoint(
                runner.work_dir,
                "best_checkpoint.pth",
                save_optimizer=False,
                save_param_scheduler=False,
                meta={"val_loss": loss, "val_iter": step},
            )
            runner.logger.info(f"best validation loss so far: saved {osp.join(runner.work_dir, 'best_checkpoint.pth')}")


def _agreed(loss: float) -> float:
    """Rank 0's ``loss`` on every rank. Each rank validates the same rows with the same weights, but GPU
    reductions need not round alike everywhere; saving the best weights is a collective under ZeRO, so a
    rank that alone saw a new best would wait for the others forever."""
    if not is_distributed():
        return loss
    value = torch.tensor([loss], dtype=torch.float64)
    broadcast(value, src=0)  # mmengine's: on the backend's device and back
    return float(value)
