"""Hooks that show what is being trained: dataset statistics, a decoded sample, the loss curve."""

import json
import os.path as osp

from mmengine.hooks import Hook

from xtune.dataset.encode import masked_text
from xtune.registry import HOOKS


@HOOKS.register_module()
class DatasetInfoHook(Hook):
    """At the start of training, logs the dataset's statistics and one sample with its loss mask."""

    def before_train(self, runner) -> None:
        dataset = runner.train_dataloader.dataset
        if not hasattr(dataset, "statistics"):
            return
        stats = dataset.statistics()
        # The details go to the log file; the terminal gets one summary line.
        file_only = {"console": False}
        runner.logger.info("dataset: " + json.dumps(stats, ensure_ascii=False), extra=file_only)
        if len(dataset):
            if hasattr(dataset, "describe"):  # a stage's dataset shows its own items (pairs, labelled rows)
                shown = dataset.describe(0)
            else:
                item = dataset[0]
                shown = masked_text(dataset.tokenizer, item["input_ids"], item["labels"])
            runner.logger.info(f"first training row, untrained parts in [-100: ...]:\n{shown}", extra=file_only)
        runner.logger.info(run_summary(runner, stats))


def run_summary(runner, stats: dict) -> str:
    """One line: model, finetune type, trainable parameters, data, steps, work dir."""
    cfg = runner.cfg
    model = runner.model.module if hasattr(runner.model, "module") else runner.model
    params = list(model.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    total = sum(getattr(p, "ds_numel", p.numel()) for p in params)
    finetune = (cfg.get("model") or {}).get("finetune_type", "?")
    accumulate = (cfg.get("optim_wrapper") or {}).get("accumulative_counts", 1) or 1
    data = f"{stats.get('samples', 0):,} rows, {stats.get('tokens', 0):,} tokens"
    if stats.get("skipped_bad_rows"):
        data += f", {stats['skipped_bad_rows']['count']} bad rows skipped"
    return (
        f"training {cfg.get('pretrained_model_name_or_path', '?')} ({finetune}): "
        f"{trainable:,} of {total:,} parameters trainable; data {data}; "
        f"{runner.max_iters:,} iterations = {-(-runner.max_iters // accumulate):,} optimizer steps; "
        f"work dir {runner.work_dir} (full log: {runner.log_dir})"
    )


@HOOKS.register_module()
class LossCurveHook(Hook):
    """Records the loss every iteration; writes ``loss.json`` and ``loss_curve.png`` in the work dir."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.losses: list[float] = []

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if outputs and "loss" in outputs:
            self.steps.append(runner.iter + 1)
            # the value RuntimeInfoHook (priority VERY_HIGH, so before this hook) already read back to the host
            self.losses.append(runner.message_hub.get_scalar("train/loss").current())

    def after_train(self, runner) -> None:
        if runner.rank != 0 or not self.steps:
            return
        with open(osp.join(runner.work_dir, "loss.json"), "w") as handle:
            json.dump({"iter": self.steps, "loss": self.losses}, handle)
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axis = plt.subplots(figsize=(7, 4))
        axis.plot(self.steps, self.losses, alpha=0.4, label="loss")
        window = max(1, len(self.losses) // 20)
        smooth = [
            sum(self.losses[max(0, i - window + 1) : i + 1]) / len(self.losses[max(0, i - window + 1) : i + 1])
            for i in range(len(self.losses))
        ]
        axis.plot(self.steps, smooth, label=f"moving mean ({window})")
        validation = next((h for h in runner.hooks if type(h).__name__ == "ValidationHook" and h.history["iter"]), None)
        if validation is not None:
            axis.plot(validation.history["iter"], validation.history["loss"], "o-", label="validation loss")
        axis.set_xlabel("iteration")
        axis.set_ylabel("loss")
        axis.legend()
        figure.tight_layout()
        figure.savefig(osp.join(runner.work_dir, "loss_curve.png"), dpi=100)
        plt.close(figure)
