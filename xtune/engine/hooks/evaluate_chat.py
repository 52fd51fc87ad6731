"""Generate answers to fixed prompts during training, to watch what the model learns."""

import json
import os.path as osp

from mmengine.hooks import Hook
from mmengine.logging import print_log

from xtune.errors import ConfigError, XtuneError
from xtune.registry import HOOKS


def _prompt_images(images: str | list[str] | None, prompts: int) -> list:
    """``(path, PIL image)`` for each prompt (None: no image), from ``evaluation_images``.

    Raises:
        ConfigError: A URL, an image that cannot be read, or neither one image nor one per prompt.
    """
    from xtune.chat.images import open_image

    paths = [images] if isinstance(images, str) else list(images or [])
    if not paths:
        return [None] * prompts
    if len(paths) not in (1, prompts):
        raise ConfigError(
            f"evaluation_images holds {len(paths)} images for {prompts} evaluation_inputs: give one image for "
            "every prompt, or one per prompt."
        )
    opened = []
    for path in paths:
        if str(path).startswith(("http://", "https://")):
            raise ConfigError(f"evaluation_images: {path} is a web URL; download the image and give its path.")
        try:
            opened.append((str(path), open_image(path)))
        except XtuneError as exc:
            raise ConfigError(f"evaluation_images: {exc}") from None
    return opened * prompts if len(opened) == 1 else opened


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
        evaluation_images: For a vision-language run (XTuner's LLaVA knob): image files asked about, one
            for every prompt or one per prompt (a single path may be given as a string). A prompt without
            ``<image>`` gets its image at its start, as ``xtune chat --image`` asks. Checked when the hook
            is built; web URLs are refused (download the image and give its path).
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
        evaluation_images: str | list[str] | None = None,
    ) -> None:
        self.inputs = list(evaluation_inputs)
        self.images = _prompt_images(evaluation_images, len(self.inputs))
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
        dataset = runner.train_dataloader.dataset
        tokenizer = dataset.tokenizer  # with the training chat template installed
        processor = getattr(dataset, "processor", None)  # a vision dataset's: images are asked about
        if any(self.images) and processor is None:
            raise ConfigError("evaluation_images: this run's data and model read text only; remove them.")
        session = ChatSession(
            llm,
            tokenizer,
            template_stop_words(tokenizer, "auto"),
            system=self.system,
            settings=GenerationSettings(max_new_tokens=self.max_new_tokens, temperature=0),
            generate_kwargs={"synced_gpus": sharded},
            processor=processor,
        )
        was_training = llm.training
        llm.eval()
        records = []
        for prompt, image in zip(self.inputs, self.images):
            session.reset()  # each prompt is a conversation of its own
            answer = session.ask(prompt, images=[image[1]] if image else None)
            record = {"iter": runner.iter + 1, "prompt": prompt, "answer": answer}
            records.append({**record, "image": image[0]} if image else record)
            print_log(f"[eval] {prompt!r} -> {answer!r}", logger="current")
        llm.train(was_training)
        if runner.rank != 0:
            return
        with open(osp.join(runner.work_dir, "eval_chat.jsonl"), "a", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
