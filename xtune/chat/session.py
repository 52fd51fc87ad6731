"""A multi-turn conversation with a causal LM, rendered with the tokenizer's chat template."""

from dataclasses import dataclass
from typing import TextIO

import torch
from jinja2.exceptions import TemplateError

from xtune.chat.stopping import StopWordStreamer, cut_at_stop, stop_token_ids
from xtune.errors import ConfigError


@dataclass
class GenerationSettings:
    """How answers are sampled.

    Attributes:
        max_new_tokens: Longest answer, in tokens.
        temperature: Sampling temperature; 0 means greedy decoding (deterministic).
        top_p: Nucleus sampling mass.
        top_k: Sample among this many most likely tokens (0: all).
        repetition_penalty: Above 1 discourages repeating tokens.
    """

    max_new_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 50
    repetition_penalty: float = 1.0

    def to_generate_kwargs(self) -> dict:
        """Keyword arguments of ``model.generate``: every value explicit, so that the model's own
        generation config cannot switch sampling back on."""
        kwargs = {"max_new_tokens": self.max_new_tokens, "repetition_penalty": self.repetition_penalty}
        if self.temperature <= 0:
            return {**kwargs, "do_sample": False}
        return {
            **kwargs,
            "do_sample": True,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
        }


class ChatSession:
    """A conversation: each :meth:`ask` renders the whole history with the chat template and generates.

    Args:
        model: A transformers causal LM (or PEFT model), in eval mode.
        tokenizer: Its tokenizer, with the chat template to use installed.
        stop_words: Strings that end an answer (see :func:`xtune.chat.stopping.template_stop_words`).
        system: An optional system prompt, sent first in every conversation.
        settings: Sampling settings.
        generate_kwargs: More arguments for ``model.generate`` (e.g. ``synced_gpus`` under ZeRO-3).
    """

    def __init__(
        self,
        model,
        tokenizer,
        stop_words: list[str],
        system: str | None = None,
        settings: GenerationSettings | None = None,
        generate_kwargs: dict | None = None,
    ) -> None:
        self.model = model
        self.generate_kwargs = dict(generate_kwargs or {})
        self.tokenizer = tokenizer
        self.stop_words = list(stop_words)
        self.system = system
        self.settings = settings or GenerationSettings()
        self.history: list[dict] = []
        self._eos_ids = self._end_ids()
        # Stop words that are not single tokens end generation by text match (e.g. "\nUser:").
        vocab = tokenizer.get_vocab()
        self._stop_strings = [word for word in self.stop_words if word not in vocab]

    def _end_ids(self) -> list[int]:
        configured = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        ids = [] if configured is None else [configured] if isinstance(configured, int) else list(configured)
        if self.tokenizer.eos_token_id is not None:
            ids.append(self.tokenizer.eos_token_id)
        return list(dict.fromkeys(ids + stop_token_ids(self.tokenizer, self.stop_words)))

    def reset(self) -> None:
        """Forget the conversation so far."""
        self.history = []

    def messages(self, text: str) -> list[dict]:
        """The conversation sent to the model when the user says ``text`` next."""
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + self.history + [{"role": "user", "content": text}]

    def render(self, text: str) -> str:
        """The prompt text for the user's next message, exactly as training renders it.

        Raises:
            ConfigError: The chat template cannot write this conversation (e.g. a system prompt).
        """
        try:
            return self.tokenizer.apply_chat_template(self.messages(text), tokenize=False, add_generation_prompt=True)
        except TemplateError as exc:
            raise ConfigError(f"the chat template cannot render this conversation: {exc}") from None

    @torch.no_grad()
    def ask(self, text: str, stream: TextIO | None = None) -> str:
        """Answer ``text`` in the conversation and remember both turns.

        Args:
            text: The user's message.
            stream: Write the answer there token by token as it is generated (None: do not stream).

        Returns:
            The answer, without stop words and surrounding whitespace.
        """
        prompt = self.render(text)
        ids = self.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        device = next(self.model.parameters()).device
        ids = ids.to(device)
        streamer = StopWordStreamer(self.tokenizer, self.stop_words, out=stream) if stream is not None else None
        pad = self.tokenizer.pad_token_id
        if pad is None and self._eos_ids:
            pad = self._eos_ids[0]
        output = self.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            eos_token_id=self._eos_ids or None,
            pad_token_id=pad,
            stop_strings=self._stop_strings or None,
            tokenizer=self.tokenizer if self._stop_strings else None,
            streamer=streamer,
            use_cache=True,
            **self.settings.to_generate_kwargs(),
            **self.generate_kwargs,
        )
        answer = self.tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True)
        answer = cut_at_stop(answer, self.stop_words).strip()
        self.history += [{"role": "user", "content": text}, {"role": "assistant", "content": answer}]
        return answer
