"""Conversations and documents into token ids and labels.

Rendering always goes through ``tokenizer.apply_chat_template`` (with the tokenizer's own template or a
built-in one installed on it), so training ids are exactly what the model sees when served. The
trained span of an assistant turn is found by rendering the conversation up to the turn with a
generation prompt (its start) and up to the end of the turn (its end): content, tool calls and the
end-of-turn token are trained; role headers, system, user and tool turns are not.

Labels are stored unshifted (the model shifts). The first label of every sample is -100: no token of
the sample predicts it, which keeps packed rows from training across sample boundaries.
"""

import os
from dataclasses import dataclass

from jinja2 import TemplateError

from xtune.errors import DataError

IGNORE_INDEX = -100


@dataclass(frozen=True)
class EncodeOptions:
    """How samples become ids and labels.

    Attributes:
        max_length: Longest sample in tokens.
        truncation: ``"truncate"`` cuts over-long samples to ``max_length``; ``"drop"`` drops them.
        train_on_prompt: Train on every token, prompts included.
        mask_history: Train only on the last assistant turn.
        add_eos: For text (pretraining) samples, end each document with EOS.
        keep_history_reasoning: Passed to the chat template: the ``qwen3`` and ``deepseek`` templates then
            keep ``<think>`` reasoning in every assistant turn, not only in those after the last user
            query (which always keep it, and are trained with it).
    """

    max_length: int = 2048
    truncation: str = "truncate"
    train_on_prompt: bool = False
    mask_history: bool = False
    add_eos: bool = True
    keep_history_reasoning: bool = False


def _render(
    tokenizer, messages: list[dict], tools, add_generation_prompt: bool = False, template_kwargs: dict | None = None
) -> str:
    return tokenizer.apply_chat_template(
        messages,
        tools=tools or None,
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
        **(template_kwargs or {}),
    )


def _template_kwargs(options: EncodeOptions) -> dict:
    return {"keep_history_reasoning": True} if options.keep_history_reasoning else {}


def _end_of_turn_suffix(tokenizer) -> str:
    """What the template writes right after an assistant message's content (e.g. ``<|im_end|>``)."""
    sentinel = "XTUNE_SENTINEL_7"
    text = _render(tokenizer, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": sentinel}], None)
    return text[text.find(sentinel) + len(sentinel) :].rstrip()


def assistant_spans(
    tokenizer, messages: list[dict], tools=None, suffix: str | None = None, template_kwargs: dict | None = None
) -> tuple[str, list[tuple[int, int]]]:
    """Render a conversation and find the character span of every assistant turn.

    Args:
        tokenizer: A tokenizer with a chat template.
        messages: The conversation.
        tools: Tool definitions for the template.
        suffix: The template's end-of-turn text (:func:`_end_of_turn_suffix`), when already known.
        template_kwargs: Extra variables for the chat template (``keep_history_reasoning``).

    Returns:
        The rendered text and one ``(start, end)`` span per assistant message, in order.

    Raises:
        DataError: The template renders an assistant turn in a way whose span cannot be found.
    """
    full = _render(tokenizer, messages, tools, template_kwargs=template_kwargs)
    suffix = _end_of_turn_suffix(tokenizer) if suffix is None else suffix
    spans: list[tuple[int, int]] = []
    cursor = 0
    last = len(messages) - 1
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prefix = _render(tokenizer, messages[:i], tools, True, template_kwargs)
        upto = full if i == last else _render(tokenizer, messages[: i + 1], tools, False, template_kwargs)
        # Where the conversation up to this turn stops agreeing with the whole conversation is the end of
        # the turn: templates may close a conversation differently (e.g. phi3 adds eos at the very end).
        agreed = upto[: len(os.path.commonprefix([upto, full]))]
        opened = agreed.rfind("<")
        if opened > agreed.rfind(">"):  # stopped inside a marker both share a beginning of ("<|user|>"/"<|end")
            agreed = agreed[:opened]
        end = len(agreed.rstrip())
        starts_here = full.startswith(prefix) and len(prefix) >= cursor
        closing = full.find(suffix, len(prefix)) if starts_here and suffix else -1
        if starts_here and upto.startswith(prefix) and end > len(prefix):
            start = len(prefix)
        elif closing >= 0:
            # The turn renders differently once later turns follow (qwen3 adds an empty think block only
            # to the last turn): it starts where the generation prompt ends and ends at its closing token.
            start, end = len(prefix), closing + len(suffix)
        else:
            # The template rewrites earlier turns (e.g. drops reasoning from history): find the content.
            content = message.get("content") or ""
            start = full.find(content, cursor) if content else -1
            if start < 0 and "</think>" in content:
                # Earlier turns lose their reasoning (deepseek, qwen3): the answer after it is what is written.
                content = content.split("</think>")[-1]
                start = full.find(content, cursor) if content.strip() else -1
            if start < 0:
                raise DataError(
                    f"the chat template renders assistant turn {i} differently inside the whole conversation "
                    "than on its own, so its trained span cannot be found (a template that drops <think> "
                    "reasoning from the reply being trained does this). Use a built-in prompt_template: "
                    "qwen3 or deepseek keep the reasoning of the trained reply."
                )
            end = start + len(content)
            if suffix and full.startswith(suffix, end):
                end += len(suffix)
        spans.append((start, end))
        cursor = end
    return full, spans


def encode_conversations(
    tokenizer, samples: list[dict], options: EncodeOptions, where: list[str] | None = None, skip_bad: bool = False
) -> list[dict]:
    """Encode a batch of conversation samples.

    Args:
        tokenizer: A fast tokenizer with a chat template.
        samples: Conversation samples (see :mod:`xtune.dataset.schema`).
        options: Length and masking options.
        where: Each sample's origin ("file, row n"), for error messages.
        skip_bad: Mark samples the template cannot render as dropped instead of raising.

    Returns:
        One dict per sample: ``input_ids``, ``labels``, and ``status`` ("" ok, "truncated", or
        "dropped: <reason>").

    Raises:
        DataError: The chat template cannot render a sample (e.g. a role it does not support).
    """
    texts, all_spans, failed = [], [], {}
    suffix = _end_of_turn_suffix(tokenizer)
    for index, sample in enumerate(samples):
        messages = sample["messages"]
        try:
            text, spans = assistant_spans(tokenizer, messages, sample.get("tools"), suffix, _template_kwargs(options))
        except (TemplateError, DataError) as exc:
            origin = where[index] if where else f"sample {index}"
            if not skip_bad:
                raise DataError(
                    f"{origin}: the chat template cannot render this conversation: {str(exc).rstrip('.')}. "
                    "Fix the row, pick "
                    "another prompt_template, or set skip_bad_rows=True."
                ) from None
            failed[index] = f"dropped: template error ({str(exc)[:80]})"
            text, spans = "", []
        if options.mask_history and spans:
            spans = spans[-1:]
        if options.train_on_prompt:
            spans = [(0, len(text))]
        texts.append(text)
        all_spans.append(spans)
    # Templates whose assistant turns end with no token of their own (glm4: the next "<|user|>" ends a
    # turn) would never teach the model to stop: append EOS, trained, after each trained turn, as
    # LLaMA-Factory does. Such rows then differ from apply_chat_template by exactly those EOS tokens.
    add_eos = not options.train_on_prompt and tokenizer.eos_token_id is not None and not suffix
    results = []
    for index, (ids, encoding, spans) in enumerate(zip(*_tokenize(tokenizer, texts), all_spans)):
        if index in failed:
            results.append({"input_ids": [], "labels": [], "status": failed[index]})
            continue
        ids = list(ids)
        ranges = _token_ranges(encoding, spans)
        labels = [IGNORE_INDEX] * len(ids)
        for first, stop in ranges:
            labels[first:stop] = ids[first:stop]
        if add_eos:
            for _, stop in reversed(ranges):  # from the end, so earlier positions stay valid
                ids.insert(stop, tokenizer.eos_token_id)
                labels.insert(stop, tokenizer.eos_token_id)
        results.append(fit_length(ids, labels, options))
    return results


def _token_ranges(encoding, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Token index ranges ``[first, stop)`` covering every token that overlaps each character span.

    Args:
        encoding: A fast tokenizer's Rust encoding, or a slow tokenizer's ``(start, end)`` token offsets.
        spans: Sorted, non-overlapping character spans.

    Asking the Rust encoding for the tokens at the span ends is much cheaper than converting every
    token's offsets to Python.
    """
    if isinstance(encoding, list):
        owner = {c: t for t, (start, end) in enumerate(encoding) for c in range(start, end)}
        token_at = owner.get
    else:
        token_at = encoding.char_to_token
    ranges = []
    for start, end in spans:
        first = next((t for c in range(start, end) if (t := token_at(c)) is not None), None)
        last = next((t for c in range(end - 1, start - 1, -1) if (t := token_at(c)) is not None), None)
        if first is not None and last is not None and last >= first:
            ranges.append((first, last + 1))
    return ranges


def _tokenize(tokenizer, texts: list[str]) -> tuple[list[list[int]], list]:
    """Ids, and for each text its Rust encoding (fast tokenizers) or its character offsets (slow ones),
    without special tokens, as apply_chat_template tokenises.

    Fast tokenizers go straight to the Rust backend in one parallel batch; the transformers wrapper
    around it costs more than the tokenisation itself.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None) if tokenizer.is_fast else None
    if backend is not None:
        encodings = backend.encode_batch(texts, add_special_tokens=False)
        return [e.ids for e in encodings], encodings
    encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    return encoded["input_ids"], encoded["offset_mapping"]


def encode_texts(tokenizer, samples: list[dict], options: EncodeOptions) -> list[dict]:
    """Encode a batch of pretraining documents: every token trained, EOS at the end of each."""
    encoded = tokenizer([s["text"] for s in samples], add_special_tokens=True)
    results = []
    for ids in encoded["input_ids"]:
        ids = list(ids)
        if options.add_eos and tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
            ids.append(tokenizer.eos_token_id)
        results.append(fit_length(ids, list(ids), options))
    return results


def fit_length(ids: list[int], labels: list[int], options: EncodeOptions) -> dict:
    """Apply ``max_length`` and ``truncation`` to one encoded sample; the first label is never trained.

    Returns:
        ``input_ids``, ``labels`` and ``status`` ("", "truncated" or "dropped: <reason>", then empty ids).
    """
    status = ""
    if len(ids) > options.max_length:
        if options.truncation == "drop":
            return {
                "input_ids": [],
                "labels": [],
                "status": f"dropped: longer than max_length={options.max_length}",
            }
        ids, labels = ids[: options.max_length], labels[: options.max_length]
        status = "truncated"
    if labels:
        labels[0] = IGNORE_INDEX
    if labels.count(IGNORE_INDEX) == len(labels):
        return {"input_ids": [], "labels": [], "status": "dropped: no trained tokens (after truncation)"}
    return {"input_ids": ids, "labels": labels, "status": status}


def masked_text(tokenizer, input_ids: list[int], labels: list[int]) -> str:
    """The sample's text with untrained stretches shown as ``[-100: ...]``: what the loss sees."""
    pieces, run, trained = [], [], None
    for token, label in zip(input_ids, labels):
        is_trained = label != IGNORE_INDEX
        if trained is not None and is_trained != trained:
            text = tokenizer.decode(run)
            pieces.append(text if trained else f"[-100: {text}]")
            run = []
        run.append(token)
        trained = is_trained
    if run:
        text = tokenizer.decode(run)
        pieces.append(text if trained else f"[-100: {text}]")
    return "".join(pieces)
