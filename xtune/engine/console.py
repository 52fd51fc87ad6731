"""A quiet, informative terminal: details go to the work dir's log file, the terminal gets the gist.

mmengine logs the environment, the whole config and the hook table at start; they stay in the log file
(``WORK_DIR/<timestamp>/<timestamp>.log``) and leave the terminal. A record logged with
``extra={"console": False}`` goes to the file only. Training progress is a tqdm bar on an interactive
terminal (iterations, loss, lr, tokens/s, ETA) and plain log lines otherwise; either way the first and
the last iteration are logged, so a short run shows its loss and a long one shows life at once.
"""

from __future__ import annotations

import logging
import sys

from mmengine.hooks import LoggerHook

from xtune.registry import HOOKS

# Beginnings of mmengine's start-up messages that belong in the log file only: the environment, the
# config, the hook table, and notices about mmengine's own internals (its CheckpointHook still builds a
# FileClient, which it has deprecated itself; SyncBN is never used here).
_FILE_ONLY_PREFIXES = (
    "\n" + "-" * 60 + "\nSystem environment:",
    "Config:\n",
    "Hooks will be executed",
    '"FileClient" will be deprecated',
    '"HardDiskBackend" is the alias',
    "Distributed training is not used, all SyncBatchNorm",
)


class _ConsoleFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "console", True) is False:
            return False
        message = record.msg if isinstance(record.msg, str) else ""
        return not message.startswith(_FILE_ONLY_PREFIXES)


def quiet_console(logger: logging.Logger) -> logging.Logger:
    """Make the logger's console handlers drop file-only records; returns the logger."""
    for handler in logger.handlers:
        if type(handler) is logging.StreamHandler and not any(isinstance(f, _ConsoleFilter) for f in handler.filters):
            handler.addFilter(_ConsoleFilter())
    return logger


class QuietConsoleMixin:
    """Runner or strategy mixin: the logger's console handlers drop file-only records."""

    def build_logger(self, *args, **kwargs):
        return quiet_console(super().build_logger(*args, **kwargs))


@HOOKS.register_module()
class XtuneLoggerHook(LoggerHook):
    """mmengine's LoggerHook, plus the first and last iteration and a progress bar on a terminal.

    Args:
        progress_bar: ``"auto"`` shows a bar when stdout is a terminal; ``True``/``False`` force it.
    """

    def __init__(self, *args, progress_bar: bool | str = "auto", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.progress_bar = progress_bar
        self._bar = None

    def before_train(self, runner) -> None:
        super().before_train(runner)
        show = sys.stdout.isatty() if self.progress_bar == "auto" else bool(self.progress_bar)
        if show and runner.rank == 0:
            from tqdm import tqdm

            self._bar = tqdm(total=runner.max_iters, initial=runner.iter, desc="train", dynamic_ncols=True)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self._bar is not None:
            hub = runner.message_hub
            shown = {}
            for key, name, fmt in (
                ("loss", "loss", "{:.4f}"),
                ("lr", "lr", "{:.2e}"),
                ("tokens_per_sec", "tok/s", "{:,.0f}"),
            ):
                if f"train/{key}" in hub.log_scalars:
                    shown[name] = fmt.format(hub.get_scalar(f"train/{key}").current())
            self._bar.set_postfix(shown, refresh=False)
            self._bar.update(1)
        edge = runner.iter == 0 or runner.iter + 1 == runner.max_iters
        if not (edge or self.every_n_inner_iters(batch_idx, self.interval)):
            super().after_train_iter(runner, batch_idx, data_batch, outputs)  # end-of-epoch lines
            return
        tag, log_str = runner.log_processor.get_log_after_iter(runner, batch_idx, "train")
        # With a bar the lines go to the log file only: the bar shows the same numbers.
        runner.logger.info(log_str, extra={"console": self._bar is None})
        runner.visualizer.add_scalars(tag, step=runner.iter + 1, file_path=self.json_log_path)

    def after_train(self, runner) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        super().after_train(runner)
