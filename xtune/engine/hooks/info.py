"""Hooks that show what is being trained: dataset statistics, a decoded sample, the loss curve."""

import json
import os.path as osp

from mmengine.hooks import Hook
from mmengine.logging import print_log

from xtune.dataset.encode import masked_text
from xtune.registry import HOOKS


@HOOKS.register_module()
class DatasetInfoHook(Hook):
    """At the start of training, logs the dataset's statistics and one sample with its loss mask."""

    def before_train(self, runner) -> None:
        dataset = runner.train_dataloader.dataset
        if not hasattr(dataset, "statistics"):
            return
        print_log("dataset: " + json.dumps(dataset.statistics(), ensure_ascii=False), logger="current")
        if len(dataset):
            item = dataset[0]
            shown = masked_text(dataset.tokenizer, item["input_ids"], item["labels"])
            print_log(f"first training row, untrained parts in [-100: ...]:\n{shown}", logger="current")


@HOOKS.register_module()
class LossCurveHook(Hook):
    """Records the loss every iteration; writes ``loss.json`` and ``loss_curve.png`` in the work dir."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.losses: list[float] = []

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if outputs and "loss" in outputs:
            self.steps.append(runner.iter + 1)
            self.losses.append(float(outputs["loss"].detach()))

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
        axis.set_xlabel("iteration")
        axis.set_ylabel("loss")
        axis.legend()
        figure.tight_layout()
        figure.savefig(osp.join(runner.work_dir, "loss_curve.png"), dpi=100)
        plt.close(figure)
