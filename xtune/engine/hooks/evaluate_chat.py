"""Generate answers to fixed prompts during training, to watch what the model learns."""

import json
import os.path as osp

from mmengine.hooks import Hook
from mmengine.logging import print_log

from xtune.registry import HOOKS


@HOOKS.register_module()
class EvaluateChatHook(Hook):
    """Answers ``evaluation_inputs`` greedily every ``every_n_iters`` iterations and at the end.

    Prompts go through :class:`xtune.chat.session.ChatSession` with the training tokenizer's chat template
    and its stop words, so the model is asked exactly as it is trained and as ``xtune chat`` asks it.
    Answers are logged and appended to ``eval_chat.jsonl`` in the work dir.

    Args:
        evaluation_inputs: User prompts.
        every_n_iters: Interval in iterations; 0 means only at the end.
        max_new_tokens: Longest answer.
        system: Optional system prompt.
        inputs_for: The dataset the prompts were written for (a dataset config's own prompts, e.g. "Who
            are you?" for ``identity``); they are skipped when ``data_path`` names other data, so a
            config whose data is switched does not ask its old questions. ``None``: always asked.
        data_path: The config's ``data_path``.
    """

    priority = "LOW"

    def __init__(
        self,
        evaluation_inputs: list[str],
        every_n_iters: int = 0,
        max_new_tokens: int = 64,
        system: str | None = None,
        inputs_for: str | None = None,
        data_path=None,
    ) -> None:
        self.inputs = list(evaluation_inputs)
        if self.inputs and inputs_for is not None and data_path != inputs_for:
            print_log(
                f"evaluation prompts skipped: they were written for the '{inputs_for}' data and data_path is "
                f"{data_path!r}. Set evaluation_inputs_for=None (and evaluation_inputs) to ask prompts of your own.",
                logger="current",
            )
            self.inputs = []
        self.every = every_n_iters
        self.max_new_tokens = max_new_tokens
        self.system = system

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self.every and (runner.iter + 1) % self.every == 0 and runner.iter + 1 < runner.max_iters:
            self._generate(runner)

    def after_train(self, runner) -> None:
        self._generate(runner)

    def _generate(self, runner) -> None:
        from xtune.chat.session import ChatSession, GenerationSettings
        from xtune.chat.stopping import template_stop_words

        model = runner.model.module if hasattr(runner.model, "module") else runner.model
        from xtune.stages.base import objective_of

        if objective_of(runner.model).model_kind != "causal_lm":  # a reward model scores text, it does not answer
            return
        llm = model.llm
        # Under ZeRO-3 every forward gathers weights from all ranks: every rank must generate, in step.
        sharded = any(hasattr(p, "ds_numel") for p in llm.parameters())
        if not self.inputs or (runner.rank != 0 and not sharded):
            return
        tokenizer = runner.train_dataloader.dataset.tokenizer  # with the training chat template installed
        session = ChatSession(
            llm,
            tokenizer,
            template_stop_words(tokenizer, "auto"),
            system=self.system,
            settings=GenerationSettings(max_new_tokens=self.max_new_tokens, temperature=0),
            generate_kwargs={"synced_gpus": sharded},
        )
        was_training = llm.training
        llm.eval()
        records = []
        for prompt in self.inputs:
            session.reset()  # each prompt is a conversation of its own
            answer = session.ask(prompt)
            records.append({"iter": runner.iter + 1, "prompt": prompt, "answer": answer})
            print_log(f"[eval] {prompt!r} -> {answer!r}", logger="current")
        llm.train(was_training)
        if runner.rank != 0:
            return
        with open(osp.join(runner.work_dir, "eval_chat.jsonl"), "a", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
