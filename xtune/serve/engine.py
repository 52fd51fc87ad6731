"""The ``hf`` backend: transformers ``generate`` in worker threads, streamed, cancellable, bounded.

Each request runs ``ChatGenerator.generate`` (the code path of ``xtune chat``) in one of
``max_concurrency`` threads; torch releases the GIL inside its kernels, so concurrent requests overlap.
Requests are not batched into one forward pass: ``generate`` takes one batch of prompts at a time, and
padding a running batch with newcomers would change greedy answers. Up to ``max_waiting`` more requests
wait; beyond that a request is refused (503) instead of queueing without bound.
"""

import asyncio
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from transformers import StoppingCriteriaList

from xtune.chat.loading import ChatModel
from xtune.chat.session import ChatGenerator, GenerationSettings
from xtune.chat.stopping import StopOnEvent, StopWordStreamer, template_stop_words


@dataclass
class Job:
    """One generation.

    Attributes:
        prompt_ids: The prompt's token ids.
        settings: Sampling settings (``max_new_tokens`` already checked against the context).
        stop_words: Strings that end the answer.
        chat: A chat answer is stripped of surrounding whitespace, as ``xtune chat`` prints it; a raw
            completion is returned as generated.
        seed: Seed torch's generator for this request (it then runs alone: the generator is global).
        ignore_eos: Generate ``max_new_tokens`` tokens, not stopping at EOS.
        vision: The prompt's image tensors, for a vision-language model (see :class:`xtune.chat.session.Prompt`).
    """

    prompt_ids: list[int]
    settings: GenerationSettings
    stop_words: list[str]
    chat: bool = True
    seed: int | None = None
    ignore_eos: bool = False
    vision: dict | None = None


@dataclass
class Outcome:
    """A finished generation: its text, token counts and why it ended (``stop`` or ``length``)."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


class Overloaded(Exception):
    """More requests are waiting than the server accepts."""


class _Sink:
    """A file-like target for :class:`StopWordStreamer` that hands text pieces to the event loop.

    For chat answers, trailing whitespace is held back until text follows it, so the streamed pieces add
    up to exactly the stripped answer.
    """

    def __init__(self, push, hold_trailing_space: bool) -> None:
        self.push = push
        self.hold = hold_trailing_space
        self._held = ""

    def write(self, text: str) -> None:
        text = self._held + text
        body = text.rstrip() if self.hold else text
        self._held = text[len(body) :]
        if body:
            self.push(body)

    def flush(self) -> None:
        pass


class _Gate:
    """Shared/exclusive access: ordinary requests share the model, a seeded sampling request runs alone."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._exclusive_waiting = 0

    @contextmanager
    def hold(self, exclusive: bool):
        with self._cond:
            if exclusive:
                self._exclusive_waiting += 1
                self._cond.wait_for(lambda: not self._exclusive and self._shared == 0)
                self._exclusive_waiting -= 1
                self._exclusive = True
            else:
                self._cond.wait_for(lambda: not self._exclusive and self._exclusive_waiting == 0)
                self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                if exclusive:
                    self._exclusive = False
                else:
                    self._shared -= 1
                self._cond.notify_all()


_END = object()


@dataclass
class Generation:
    """A submitted job: text pieces arrive on :meth:`pieces`, the :class:`Outcome` from :meth:`outcome`."""

    cancelled: threading.Event = field(default_factory=threading.Event)
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    future: asyncio.Future | None = None

    def cancel(self) -> None:
        """Stop generating (the client is gone); the worker thread ends at the next token."""
        self.cancelled.set()

    async def pieces(self) -> AsyncIterator[str]:
        while (item := await self.queue.get()) is not _END:
            yield item

    async def outcome(self) -> Outcome:
        return await self.future


class HFEngine:
    """Serves one loaded model with transformers.

    Args:
        loaded: The model, tokenizer and template from :mod:`xtune.chat.loading`.
        max_concurrency: Generations running at once.
        max_waiting: Requests that may wait for a free slot.
    """

    def __init__(self, loaded: ChatModel, max_concurrency: int = 4, max_waiting: int = 64) -> None:
        self.loaded = loaded
        self.tokenizer = loaded.tokenizer
        self.stop_words = template_stop_words(loaded.tokenizer, loaded.template)
        self.generator = ChatGenerator(loaded.model, loaded.tokenizer, self.stop_words, processor=loaded.processor)
        self.max_concurrency = max_concurrency
        self.max_waiting = max_waiting
        self.context_length = _context_length(loaded)
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="xtune-generate")
        self._gate = _Gate()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self.counts = {"running": 0, "waiting": 0, "completed": 0, "cancelled": 0, "failed": 0}

    def stats(self) -> dict:
        with self._lock:
            return dict(self.counts)

    def _count(self, **changes: int) -> None:
        with self._lock:
            for key, change in changes.items():
                self.counts[key] += change

    def submit(self, job: Job) -> Generation:
        """Start ``job`` (from the event loop's thread).

        Raises:
            Overloaded: ``max_waiting`` requests are already waiting.
        """
        loop = asyncio.get_running_loop()
        with self._lock:
            if self.counts["waiting"] >= self.max_waiting:
                raise Overloaded(
                    f"{self.counts['waiting']} requests are waiting for one of {self.max_concurrency} "
                    "generation slots; retry later or start the server with a larger --max-concurrency."
                )
            self.counts["waiting"] += 1
        generation = Generation()

        def push(text: str) -> None:
            loop.call_soon_threadsafe(generation.queue.put_nowait, text)

        def run() -> Outcome:
            try:
                return self._run(job, generation, push)
            finally:
                loop.call_soon_threadsafe(generation.queue.put_nowait, _END)

        generation.future = asyncio.wrap_future(self._pool.submit(run), loop=loop)
        return generation

    def _run(self, job: Job, generation: Generation, push) -> Outcome:
        sampling_seeded = job.seed is not None and job.settings.temperature > 0
        with self._gate.hold(exclusive=sampling_seeded):
            self._count(waiting=-1, running=1)
            try:
                if generation.cancelled.is_set() or self._stopping.is_set():
                    self._count(cancelled=1)
                    return Outcome("", len(job.prompt_ids), 0, "cancelled")
                if sampling_seeded:
                    torch.manual_seed(job.seed)
                streamer = StopWordStreamer(
                    self.tokenizer, job.stop_words, out=_Sink(push, job.chat), end="", lstrip=job.chat
                )
                new_ids = self.generator.generate(
                    job.prompt_ids,
                    job.settings,
                    stop_words=job.stop_words,
                    streamer=streamer,
                    stopping_criteria=StoppingCriteriaList([StopOnEvent(generation.cancelled, self._stopping)]),
                    ignore_eos=job.ignore_eos,
                    vision=job.vision,
                )
            except Exception:
                self._count(failed=1)
                raise
            finally:
                self._count(running=-1)
        text = self.generator.answer_text(new_ids, job.stop_words, strip=job.chat)
        if generation.cancelled.is_set() or self._stopping.is_set():
            self._count(cancelled=1)
            return Outcome(text, len(job.prompt_ids), len(new_ids), "cancelled")
        self._count(completed=1)
        return Outcome(text, len(job.prompt_ids), len(new_ids), self._finish_reason(job, new_ids))

    def _finish_reason(self, job: Job, new_ids: list[int]) -> str:
        """``length`` when the answer used all its tokens without reaching a stop token or stop word."""
        if len(new_ids) < job.settings.max_new_tokens:
            return "stop"
        ended = new_ids[-1] in self.generator.eos_ids(job.stop_words) if new_ids else False
        raw = self.tokenizer.decode(new_ids, skip_special_tokens=True)
        return "stop" if ended or any(word in raw for word in job.stop_words) else "length"

    def stop(self) -> None:
        """End every running generation and refuse to start queued ones (the server is stopping)."""
        self._stopping.set()

    def close(self) -> None:
        self.stop()
        self._pool.shutdown(wait=True, cancel_futures=True)


def _context_length(loaded: ChatModel) -> int:
    """The longest sequence the model takes: its position limit, or the tokenizer's when smaller."""
    config = getattr(loaded.model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()  # a vision-language model's limit is its language model's
    limits = [getattr(config, "max_position_embeddings", None), getattr(loaded.tokenizer, "model_max_length", None)]
    # Tokenizers without a limit report a huge sentinel (about 1e30).
    usable = [int(limit) for limit in limits if isinstance(limit, int) and 0 < limit < 10**7]
    return min(usable) if usable else 4096
