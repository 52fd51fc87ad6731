"""The Chat tab's model: loaded with :mod:`xtune.chat.loading`, answered by :class:`ChatSession`.

The page's chat history is the conversation: each message builds a session over it, so clearing the
history on the page is all "clear" needs. Answers stream: ``ChatSession.ask`` writes the text as it is
generated into a queue that the page reads.
"""

import queue
import threading
from collections.abc import Iterator
from pathlib import Path

from transformers import StoppingCriteriaList

from xtune.chat.loading import ChatModel, load_checkpoint_for_chat, load_model_for_chat
from xtune.chat.session import ChatSession, GenerationSettings
from xtune.chat.stopping import StopOnEvent, template_stop_words
from xtune.errors import XtuneError

SOURCES = ("model folder (base or merged)", "model + adapter", "training checkpoint")


class _QueueWriter:
    """A text stream whose writes go to a queue (what :class:`StopWordStreamer` writes to)."""

    def __init__(self, out: queue.Queue) -> None:
        self.out = out

    def write(self, text: str) -> int:
        self.out.put(text)
        return len(text)

    def flush(self) -> None:
        pass


class BoardChat:
    """The model the Chat tab talks to; one at a time, replaced by each Load."""

    def __init__(self) -> None:
        self.loaded: ChatModel | None = None
        self.description = ""
        self._lock = threading.Lock()  # one generation at a time on one model

    def load(
        self,
        source: str,
        model: str = "",
        adapter: str = "",
        config: str = "",
        checkpoint: str = "",
        template: str = "auto",
        device: str = "auto",
    ) -> str:
        """Load what ``source`` names (one of :data:`SOURCES`); returns what was loaded.

        Raises:
            XtuneError: A path is missing or the model cannot be loaded.
        """
        model, adapter, config, checkpoint = (str(v or "").strip() for v in (model, adapter, config, checkpoint))
        with self._lock:
            self.loaded = None  # free the old model first
            if source == SOURCES[2]:
                if not config or not checkpoint:
                    raise XtuneError("a training checkpoint needs its run's config and a checkpoint (pick a run).")
                for path in (config, checkpoint):
                    if not Path(path).exists():
                        raise XtuneError(f"{path} does not exist.")
                self.loaded = load_checkpoint_for_chat(config, checkpoint, device=device)
                self.description = f"checkpoint {checkpoint} (config {config})"
            else:
                if not model:
                    raise XtuneError("give a model folder or hub name to load.")
                if source == SOURCES[1] and not adapter:
                    raise XtuneError("give the adapter folder (from Export's pth_to_hf) to put on the model.")
                use_adapter = adapter if source == SOURCES[1] else None
                self.loaded = load_model_for_chat(model, adapter=use_adapter, template=template, device=device)
                self.description = model + (f" + adapter {adapter}" if use_adapter else "")
        return f"loaded {self.description}"

    def stream(
        self, message: str, history: list[dict], system: str = "", settings: GenerationSettings | None = None
    ) -> Iterator[str]:
        """Answer ``message`` after ``history`` (``{"role", "content"}`` dicts), yielding the answer so far.

        Raises:
            XtuneError: No model is loaded, or the template cannot render the conversation.
        """
        if self.loaded is None:
            raise XtuneError("no model loaded: pick one above and press Load.")
        loaded = self.loaded
        stop_words = template_stop_words(loaded.tokenizer, loaded.template)
        session = ChatSession(loaded.model, loaded.tokenizer, stop_words, system=system or None, settings=settings)
        session.history = [{"role": m["role"], "content": _text(m["content"])} for m in history]
        session.render(message)  # a template error is raised here, before a thread starts
        pieces: queue.Queue = queue.Queue()
        failure: list[BaseException] = []
        done = object()
        cancelled = threading.Event()  # set when the page stops reading (Clear, a closed tab)

        def generate() -> None:
            try:
                with self._lock:
                    stopping = StoppingCriteriaList([StopOnEvent(cancelled)])
                    session.ask(message, stream=_QueueWriter(pieces), stopping_criteria=stopping)
            except Exception as exc:  # noqa: BLE001  (re-raised in the page's thread below)
                failure.append(exc)
            finally:
                pieces.put(done)

        threading.Thread(target=generate, daemon=True).start()
        answer = ""
        try:
            while (piece := pieces.get()) is not done:
                answer += piece
                yield answer.strip()
        finally:
            cancelled.set()  # a closed generator ends the generation too, and frees the model's lock
        if failure:
            raise failure[0]
        yield session.history[-1]["content"]


def _text(content) -> str:
    """Gradio may hand message content back as a list of parts; the model needs the text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in content)
    return str(content)
