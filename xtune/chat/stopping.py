"""Where an assistant turn ends: stop words, stop token ids, and a streamer that never prints them."""

import sys
import threading
from typing import TextIO

import torch
from transformers import StoppingCriteria, TextStreamer

from xtune.dataset.templates import TEMPLATES, stop_words_for


class StopOnEvent(StoppingCriteria):
    """Ends generation once any of ``events`` is set (a client went away, a page cleared its chat)."""

    def __init__(self, *events: threading.Event) -> None:
        self.events = events

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        stop = any(event.is_set() for event in self.events)
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


def builtin_template_name(tokenizer) -> str | None:
    """The built-in template whose text the tokenizer's ``chat_template`` is, if any.

    A model exported by ``xtune convert`` carries its training template as its own chat template; naming
    it gives back that template's stop words (``"\\nUser:"`` for ``default``, which no token list holds).
    """
    current = (getattr(tokenizer, "chat_template", None) or "").strip()
    return next((t.name for t in TEMPLATES.values() if t.jinja.strip() == current), None) if current else None


def template_stop_words(tokenizer, template: str, extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Stop words for ``template`` (``auto``: the built-in the tokenizer's template is, else its
    end-of-turn tokens), the tokenizer's EOS and ``extra``, without duplicates."""
    name = template if template != "auto" else (builtin_template_name(tokenizer) or "auto")
    words = stop_words_for(tokenizer, name) + list(extra)
    return list(dict.fromkeys(word for word in words if word))


def stop_token_ids(tokenizer, words: list[str]) -> list[int]:
    """Ids of the stop words that are single tokens of the vocabulary (they can end generation as EOS)."""
    vocab = tokenizer.get_vocab()
    return list(dict.fromkeys(vocab[word] for word in words if word in vocab))


def cut_at_stop(text: str, words: list[str]) -> str:
    """``text`` up to the first stop word in it."""
    cut = min((index for index in (text.find(word) for word in words if word) if index >= 0), default=len(text))
    return text[:cut]


class StopWordStreamer(TextStreamer):
    """Streams generated text as it is decoded, leaving out stop words and anything after them.

    Text that could be the start of a stop word is held back until the next tokens show that it is not.
    Leading whitespace of the answer is dropped (``lstrip``), as the final answer is stripped.

    Args:
        tokenizer: The tokenizer decoding the answer.
        stop_words: Strings that end the answer.
        out: Where text goes (stdout by default).
        end: Written when the answer ends (a newline for the terminal).
        lstrip: Drop the answer's leading whitespace (a chat answer is stripped; a raw completion is not).
    """

    def __init__(
        self, tokenizer, stop_words: list[str], out: TextIO | None = None, end: str = "\n", lstrip: bool = True
    ) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.stop_words = [word for word in stop_words if word]
        self.out = out
        self._end = end  # not `end`: TextStreamer.end() is the method generate calls
        self.lstrip = lstrip
        self._pending = ""
        self._stopped = False
        self._started = False

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        out = self.out or sys.stdout
        if not self._stopped:
            self._pending += text
            cut = cut_at_stop(self._pending, self.stop_words)
            if cut != self._pending:
                self._stopped = True
                self._write(out, cut)
                self._pending = ""
            else:
                keep = 0 if stream_end else self._held_back(self._pending)
                self._write(out, self._pending[: len(self._pending) - keep])
                self._pending = self._pending[len(self._pending) - keep :]
        if stream_end:
            out.write(self._end)
            out.flush()
            self._pending, self._stopped, self._started = "", False, False

    def _held_back(self, text: str) -> int:
        """Length of the longest end of ``text`` that begins some stop word."""
        return max(
            (
                size
                for word in self.stop_words
                for size in range(min(len(word), len(text)), 0, -1)
                if word.startswith(text[-size:])
            ),
            default=0,
        )

    def _write(self, out: TextIO, text: str) -> None:
        if not self._started and self.lstrip:
            text = text.lstrip()
            self._started = bool(text)
        if text:
            out.write(text)
            out.flush()
