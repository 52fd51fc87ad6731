"""The training loop: epochs counted in iterations, one optimizer step per group of micro-batches.

Before a step's first micro-batch runs, the loop looks ahead at all of the step's micro-batches and
asks the model's objective how many units they hold (trained tokens for SFT, pairs for DPO; summed over
ranks). Every micro-batch's loss is its unit-loss sum divided by that count, so a step's gradient is
the mean over the step's units, however they were split into micro-batches, ranks and packed rows.
"""

import math
import signal

import torch
from mmengine.dist import all_reduce, get_world_size, is_distributed
from mmengine.logging import print_log
from mmengine.runner import IterBasedTrainLoop

from xtune.checkpoint.files import last_checkpoint
from xtune.errors import XtuneError
from xtune.registry import LOOPS
from xtune.stages.base import objective_of


class TrainingInterrupted(XtuneError):
    """Training stopped on a signal or a non-finite loss; the message says what was kept.

    Args:
        message: What happened and what is on disk.
        exit_status: ``xtune train``'s status: 128 + the signal number for a signal, 2 otherwise.
        resumable: The CLI adds the command that resumes the run.
    """

    def __init__(self, message: str, exit_status: int = 2, resumable: bool = True) -> None:
        super().__init__(message)
        self.exit_status = exit_status
        self.resumable = resumable


def nonfinite_stop(runner, what: str) -> TrainingInterrupted:
    """The error for a non-finite loss or weights: nothing of that step was saved; names what is kept."""
    kept = last_checkpoint(runner.work_dir)
    if kept:
        where = f"nothing was saved from it; the last good checkpoint, {kept}, is kept. "
        then = "then resume with --resume auto."
    else:
        where = "nothing was saved from it, and no checkpoint had been saved before: the run must start over. "
        then = "then start again."
    return TrainingInterrupted(
        f"{what} at iteration {runner.iter}; {where}Lower lr, use fp32/bf16 instead of fp16, or check the data, {then}",
        resumable=False,
    )


def schedulers_in_iterations(schedulers, epoch_length: int, max_epochs: int):
    """Scheduler configs with epoch spans converted to iterations.

    Spans shorter than one iteration (a 3% warmup of a 20-iteration run) are dropped instead of
    reaching mmengine, which rejects them. Built schedulers and non-list values pass through.
    """
    if not isinstance(schedulers, list):
        return schedulers
    converted = []
    for item in schedulers:
        if isinstance(item, dict) and item.get("by_epoch") and item.get("convert_to_iter_based"):
            item = {k: v for k, v in item.items() if k != "convert_to_iter_based"}
            begin = round(float(item.get("begin", 0)) * epoch_length)
            end = round(float(item.get("end", max_epochs)) * epoch_length)
            if end <= begin:
                continue
            item.update(begin=begin, end=end, by_epoch=False)
        converted.append(item)
    return converted


class _EpochIterator:
    """Cycles through a dataloader forever, telling its sampler each new epoch."""

    def __init__(self, dataloader) -> None:
        self.dataloader = dataloader
        self.epoch = 0
        self.iterator = iter(dataloader)

    def __next__(self):
        try:
            return next(self.iterator)
        except StopIteration:
            self.epoch += 1
            sampler = getattr(self.dataloader, "sampler", None)
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(self.epoch)
            self.iterator = iter(self.dataloader)
            return next(self.iterator)


@LOOPS.register_module()
class TrainLoop(IterBasedTrainLoop):
    """Iteration-based training given in epochs or iterations.

    Args:
        runner: The runner.
        dataloader: A dataloader or its config; built once.
        max_epochs: Epochs to train; converted to iterations with the dataloader's length.
        max_iters: Iterations (micro-batches) to train, instead of ``max_epochs``.
        val_begin: See ``IterBasedTrainLoop``.
        val_interval: See ``IterBasedTrainLoop``.
        nonfinite: On a NaN/Inf loss, ``stop`` (save nothing, keep the last good checkpoint, raise) or
            ``skip`` (drop that optimizer step and go on).
        sequence_parallel_size: Ranks that share each micro-batch, each training its slice of every row
            (:func:`xtune.model.sequence_parallel.adapt_dataloader`); 1 is plain data parallel.
    """

    def __init__(
        self,
        runner,
        dataloader,
        max_epochs: int | None = None,
        max_iters: int | None = None,
        val_begin: int = 1,
        val_interval: int = 10**9,
        nonfinite: str = "stop",
        sequence_parallel_size: int = 1,
    ) -> None:
        if nonfinite not in ("stop", "skip"):
            raise XtuneError(f"train_cfg.nonfinite must be 'stop' or 'skip', got '{nonfinite}'.")
        self.nonfinite = nonfinite
        if isinstance(dataloader, dict):
            diff_rank_seed = runner._randomness_cfg.get("diff_rank_seed", False)
            dataloader = runner.build_dataloader(dataloader, seed=runner.seed, diff_rank_seed=diff_rank_seed)
        if sequence_parallel_size > 1:
            from xtune.model.sequence_parallel import adapt_dataloader

            dataloader = adapt_dataloader(dataloader, sequence_parallel_size)
        if (max_epochs is None) == (max_iters is None):
            raise XtuneError("train_cfg needs exactly one of max_epochs and max_iters.")
        if len(dataloader) == 0:
            raise XtuneError("the training dataloader is empty: the dataset has no usable samples.")
        iters = max_iters if max_iters is not None else int(max_epochs) * len(dataloader)
        super().__init__(runner, dataloader, iters, val_begin=val_begin, val_interval=val_interval)
        self._max_epochs = max_epochs if max_epochs is not None else math.ceil(iters / len(dataloader))
        self.dataloader_iterator = _EpochIterator(self.dataloader)
        self._stop_signal: int | None = None
        # Runners build their schedulers after the loop: give them spans in iterations.
        runner.param_schedulers = schedulers_in_iterations(
            runner.param_schedulers, len(self.dataloader), self._max_epochs
        )

    # ----------------------------------------------------------------------------- helpers
    def _loss_factor(self, accumulate: int) -> int:
        """The divisor mmengine's OptimWrapper applies to this iteration's loss (see ``scale_loss``)."""
        if accumulate == 1:
            return 1
        remainder = self._max_iters % accumulate
        return accumulate if self._iter < self._max_iters - remainder else remainder

    def _on_signal(self, signum, frame) -> None:
        self._stop_signal = signum
        print_log(f"received signal {signum}: finishing the current step, then saving", logger="current")

    def _agreed_stop_signal(self) -> int | None:
        """The stop signal any rank received during the step, the same on every rank.

        Signals reach ranks at different moments; one small all-reduce per optimizer step makes every
        rank stop after the same step, so they save the same iteration (and none waits forever for
        another's next collective).
        """
        if not is_distributed():
            return self._stop_signal
        received = torch.zeros(signal.NSIG)  # ranks that received signal 1, 2, ...
        if self._stop_signal is not None:
            received[self._stop_signal - 1] = 1.0
        all_reduce(received, op="sum")
        found = received.nonzero()
        return self._stop_signal or (int(found[0][0]) + 1 if len(found) else None)

    def _save_and_raise(self, signum: int) -> None:
        from xtune.engine.hooks.checkpoint import AtomicCheckpointHook

        saved = None
        for hook in self.runner.hooks:
            if isinstance(hook, AtomicCheckpointHook):
                hook.save_now(self.runner)  # every rank takes part and waits until it is written
                saved = hook.last_ckpt
        where = f"checkpoint saved at {saved}" if saved else "no checkpoint hook, nothing saved"
        name = signal.Signals(signum).name
        raise TrainingInterrupted(
            f"interrupted by {name} at iteration {self._iter}; {where}.",
            exit_status=128 + signum,
            resumable=bool(saved),
        )

    # ----------------------------------------------------------------------------- running
    def run(self):
        from xtune.engine.hooks.rng import RNGStateHook

        self.runner.call_hook("before_train")
        self.runner.call_hook("before_train_epoch")
        if self._iter > 0:
            print_log(f"resuming: skipping the {self._iter} micro-batches already trained", logger="current")
            for _ in range(self._iter):
                next(self.dataloader_iterator)
        for hook in self.runner.hooks:
            if isinstance(hook, RNGStateHook):
                hook.restore()
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self._run_steps()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        self.runner.call_hook("after_train_epoch")
        self.runner.call_hook("after_train")
        return self.runner.model

    def _run_steps(self) -> None:
        # Under DeepSpeed the engine accumulates: it divides every micro-batch's loss by its
        # gradient_accumulation_steps, even in a shorter last group, and steps where it is told to.
        engine = getattr(self.runner, "deepspeed_engine", None)
        if engine is not None:
            accumulate = engine.gradient_accumulation_steps()
        else:
            accumulate = self.runner.optim_wrapper._accumulative_counts
        skip = self.nonfinite == "skip" and hasattr(self.runner.optim_wrapper, "skip_nonfinite")
        if self.nonfinite == "skip" and not skip:
            raise XtuneError("train_cfg.nonfinite='skip' is not supported with --deepspeed; use 'stop'.")
        if skip:
            self.runner.optim_wrapper.skip_nonfinite = True
        world = get_world_size()
        objective = objective_of(self.runner.model)
        while self._iter < self._max_iters and not self.stop_training:
            group_end = min(self._iter - self._iter % accumulate + accumulate, self._max_iters)
            batches = [next(self.dataloader_iterator) for _ in range(group_end - self._iter)]
            units = [objective.units(b) for b in batches]  # on the host: the batches are still on the CPU
            tokens = torch.tensor(float(sum(units)))
            if is_distributed():
                all_reduce(tokens, op="sum")
            # The optimizer wrapper (or DeepSpeed) divides each loss by a factor and DDP (or ZeRO)
            # averages gradients over ranks: undo both.
            factor = accumulate if engine is not None else self._loss_factor(accumulate)
            scale = factor * world / max(float(tokens), 1.0)
            for position, batch in enumerate(batches):
                self.runner.model.train()
                if engine is not None:
                    engine.set_gradient_accumulation_boundary(position == len(batches) - 1)
                batch["loss_scale"] = scale
                batch["units"] = units[position]  # the objective need not count them again on the device
                self.run_iter(batch)
                loss = self.runner.message_hub.get_scalar("train/loss").current()
                if not math.isfinite(loss) and not skip:
                    raise nonfinite_stop(self.runner, f"the loss became {loss}")
            stop = self._agreed_stop_signal()
            if stop is not None:
                self._save_and_raise(stop)
        if skip:
            self._check_skipped_steps()

    def _check_skipped_steps(self) -> None:
        """Report skipped steps; a run in which every optimizer step was skipped trained nothing: fail."""
        wrapper = self.runner.optim_wrapper
        skipped, steps = wrapper.skipped_steps, wrapper.steps
        if not skipped:
            return
        if skipped == steps:
            raise TrainingInterrupted(
                f"every one of the {steps} optimizer steps of this run was skipped (a non-finite loss in each, "
                "train_cfg.nonfinite='skip'): nothing was trained. Lower lr, use fp32/bf16 instead of fp16, or check "
                "the data.",
                resumable=False,
            )
        print_log(f"skipped {skipped} of {steps} optimizer steps (non-finite loss)", logger="current", level=30)
