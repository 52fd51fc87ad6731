"""Generation through the training chat template: :class:`ChatGenerator` (one prompt, one answer) and
:class:`ChatSession` (a multi-turn conversation on top of it).

``xtune chat`` and ``xtune serve`` both generate through :class:`ChatGenerator`, so an answer at
temperature 0 is the same token for token whichever of them asks.
"""

from dataclasses import dataclass
from typing import Any, TextIO

import torch
from jinja2.exceptions import TemplateError

from xtune.chat.stopping import StopWordStreamer, cut_at_stop, stop_token_ids
from xtune.errors import ConfigError, DataError


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


@dataclass
class Prompt:
    """What the model reads for one answer.

    Attributes:
        text: The rendered prompt (image tokens expanded).
        ids: Its token ids.
        vision: The image processor's tensors for the prompt's images (``pixel_values``, Qwen's
            ``image_grid_thw``), or None without images.
    """

    text: str
    ids: list[int]
    vision: dict[str, Any] | None = None


class ChatGenerator:
    """Renders messages with the tokenizer's chat template and generates one answer.

    Args:
        model: A transformers causal LM or vision-language model (or PEFT model), in eval mode.
        tokenizer: Its tokenizer, with the chat template to use installed.
        stop_words: Strings that end an answer (see :func:`xtune.chat.stopping.template_stop_words`).
        generate_kwargs: More arguments for ``model.generate`` (e.g. ``synced_gpus`` under ZeRO-3).
        processor: The :class:`~xtune.hf.vision.VisionProcessor` of a vision-language model (None: the
            model reads text only).
    """

    def __init__(
        self, model, tokenizer, stop_words: list[str], generate_kwargs: dict | None = None, processor=None
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.processor = processor
        self.stop_words = list(stop_words)
        self.generate_kwargs = dict(generate_kwargs or {})
        configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        ids = [] if configured is None else [configured] if isinstance(configured, int) else list(configured)
        if tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
        self._model_eos_ids = list(dict.fromkeys(ids))

    def eos_ids(self, stop_words: list[str]) -> list[int]:
        """Token ids that end generation: the model's and tokenizer's EOS, and single-token stop words."""
        return list(dict.fromkeys(self._model_eos_ids + stop_token_ids(self.tokenizer, stop_words)))

    def render(self, messages: list[dict], tools: list[dict] | None = None) -> str:
        """The prompt text for ``messages`` (plus ``tools``), exactly as training renders it.

        Raises:
            ConfigError: The chat template cannot write this conversation (e.g. a system prompt).
        """
        try:
            return self.tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)
        except TemplateError as exc:
            raise ConfigError(f"the chat template cannot render this conversation: {exc}") from None

    def encode(self, prompt: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of ``prompt``; a rendered chat prompt already holds its special tokens."""
        return self.tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"]

    def prompt(
        self, messages: list[dict], images: list | None = None, tools: list[dict] | None = None, pixels: bool = True
    ) -> Prompt:
        """The :class:`Prompt` for ``messages`` whose ``<image>`` markers stand for ``images`` (PIL, in order).

        Each marker becomes the family's image text (:func:`xtune.hf.vision.expand_image_markers`, as
        training writes it), the conversation is rendered with the chat template, and the images go
        through the model's own image processor. A text model reads ``<image>`` as plain text. With
        ``pixels=False`` the images are only measured and ``vision`` is left None (the caller runs
        ``processor.pixels``): a server checks the prompt's length before the image processor runs.

        Raises:
            ConfigError: Images for a text-only model, or a conversation the template cannot render.
            DataError: The markers and the images differ in number, an assistant message holds a marker,
                or the text spells the image token itself.
        """
        images = list(images or [])
        if self.processor is None:
            if images:
                raise ConfigError("this model reads text only; images need a vision-language model.")
            text = self.render(messages, tools)
            return Prompt(text, self.encode(text))
        from xtune.hf.vision import expand_image_markers

        counts = self.processor.token_counts([(image.height, image.width) for image in images])
        text = self.render(expand_image_markers(messages, counts, self.processor), tools)
        ids = self.encode(text)
        found = ids.count(self.processor.image_token_id)
        if found != sum(counts):
            raise DataError(
                f"the conversation spells the image token {self.processor.image_token!r} itself ({found} image "
                f"tokens where {len(images)} image(s) make {sum(counts)}); write <image> where an image belongs."
            )
        return Prompt(text, ids, self.processor.pixels(images) if images and pixels else None)

    @torch.no_grad()
    def generate(
        self,
        ids: list[int],
        settings: GenerationSettings,
        stop_words: list[str] | None = None,
        streamer=None,
        stopping_criteria=None,
        ignore_eos: bool = False,
        vision: dict | None = None,
    ) -> list[int]:
        """Generate after the prompt ``ids``; returns the new token ids (stop tokens included).

        Args:
            ids: The prompt's token ids.
            settings: Sampling settings.
            stop_words: Strings that end the answer (default: this generator's).
            streamer: A transformers streamer that receives tokens as they are generated.
            stopping_criteria: More ``StoppingCriteria`` (e.g. one that ends a cancelled request).
            ignore_eos: Generate ``max_new_tokens`` tokens: EOS and single-token stop words are
                suppressed until then (multi-token stop words still end the answer).
            vision: The prompt's image tensors (:attr:`Prompt.vision`), for a vision-language model.
        """
        words = self.stop_words if stop_words is None else list(stop_words)
        eos_ids = self.eos_ids(words)
        vocab = self.tokenizer.get_vocab()
        # Stop words that are not single tokens end generation by text match (e.g. "\nUser:").
        stop_strings = [word for word in words if word not in vocab]
        device = next(self.model.parameters()).device
        input_ids = torch.tensor([ids], dtype=torch.long, device=device)
        pad = self.tokenizer.pad_token_id
        if pad is None and eos_ids:
            pad = eos_ids[0]
        kwargs = settings.to_generate_kwargs()
        if ignore_eos:
            kwargs["min_new_tokens"] = settings.max_new_tokens
        if vision:
            from xtune.model.vision import token_type_ids, vision_inputs

            # the model's image inputs as training builds them: Qwen-VL also gets mm_token_type_ids, as its
            # processor returns them; without them transformers gives image tokens 1-D text positions
            batch = {"input_ids": input_ids, "vision": _on_model(vision, self.model, device)}
            kwargs.update(vision_inputs(batch, token_type_ids(self.model)))
        output = self.model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            eos_token_id=eos_ids or None,
            pad_token_id=pad,
            stop_strings=stop_strings or None,
            tokenizer=self.tokenizer if stop_strings else None,
            streamer=streamer,
            stopping_criteria=stopping_criteria,
            use_cache=True,
            **kwargs,
            **self.generate_kwargs,
        )
        return output[0, len(ids) :].tolist()

    def answer_text(self, new_ids: list[int], stop_words: list[str] | None = None, strip: bool = True) -> str:
        """The answer in ``new_ids``: special tokens dropped, cut at the first stop word, stripped."""
        text = self.tokenizer.decode(new_ids, skip_special_tokens=True)
        text = cut_at_stop(text, self.stop_words if stop_words is None else stop_words)
        return text.strip() if strip else text


def _on_model(vision: dict, model, device) -> dict:
    """Image tensors on the model's device; pixels in the model's floating dtype (bf16 on a GPU)."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return {
        key: value.to(device, dtype=dtype) if value.is_floating_point() else value.to(device)
        for key, value in vision.items()
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
        processor: A vision-language model's :class:`~xtune.hf.vision.VisionProcessor`: messages may then
            carry images (see :meth:`ask`).
    """

    def __init__(
        self,
        model,
        tokenizer,
        stop_words: list[str],
        system: str | None = None,
        settings: GenerationSettings | None = None,
        generate_kwargs: dict | None = None,
        processor=None,
    ) -> None:
        self.generator = ChatGenerator(model, tokenizer, stop_words, generate_kwargs, processor=processor)
        self.model = model
        self.tokenizer = tokenizer
        self.stop_words = self.generator.stop_words
        self.system = system
        self.settings = settings or GenerationSettings()
        self.history: list[dict] = []
        self.images: list = []  # the history's images, in the order of its <image> markers

    def reset(self) -> None:
        """Forget the conversation so far (its images too)."""
        self.history = []
        self.images = []

    def messages(self, text: str) -> list[dict]:
        """The conversation sent to the model when the user says ``text`` next."""
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + self.history + [{"role": "user", "content": text}]

    def render(self, text: str) -> str:
        """The prompt text for the user's next message, exactly as training renders it.

        Raises:
            ConfigError: The chat template cannot write this conversation (e.g. a system prompt).
        """
        return self.generator.render(self.messages(text))

    def ask(self, text: str, stream: TextIO | None = None, stopping_criteria=None, images: list | None = None) -> str:
        """Answer ``text`` in the conversation and remember both turns.

        Args:
            text: The user's message.
            stream: Write the answer there token by token as it is generated (None: do not stream).
            stopping_criteria: More ``StoppingCriteria`` (e.g. one that ends an answer the page cancelled).
            images: PIL images that go with ``text``: where its ``<image>`` markers are, or one per line
                before it when it has none (:func:`xtune.chat.images.with_image_markers`). Earlier turns'
                images stay in the conversation.

        Returns:
            The answer, without stop words and surrounding whitespace.

        Raises:
            XtuneError: Images for a text-only model, or markers that do not match the images; the
                conversation is unchanged.
        """
        from xtune.chat.images import with_image_markers

        images = list(images or [])
        if images:
            text = with_image_markers(text, len(images))
        prompt = self.generator.prompt(self.messages(text), self.images + images)
        streamer = StopWordStreamer(self.tokenizer, self.stop_words, out=stream) if stream is not None else None
        new_ids = self.generator.generate(
            prompt.ids, self.settings, streamer=streamer, stopping_criteria=stopping_criteria, vision=prompt.vision
        )
        answer = self.generator.answer_text(new_ids)
        self.history += [{"role": "user", "content": text}, {"role": "assistant", "content": answer}]
        self.images += images
        return answer
