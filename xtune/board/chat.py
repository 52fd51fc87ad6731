"""The Chat tab's model: loaded with :mod:`xtune.chat.loading`, answered by :class:`ChatSession`.

The page's chat history is the conversation: each message builds a session over it, so clearing the
history on the page is all "clear" needs. Answers stream: ``ChatSession.ask`` writes the text as it is
generated into a queue that the page reads.

Images (vision-language models): a user message on the page holds its image files beside its text. Each
message rebuilds the session's images from the history in message order, and a message's text gets its
images' ``<image>`` markers exactly as :meth:`ChatSession.ask` wrote them when that turn was asked
(:func:`xtune.chat.images.with_image_markers`), so a conversation on the page is the one ``xtune chat``
would have had.
"""

import queue
import threading
from collections.abc import Iterator
from pathlib import Path

from transformers import StoppingCriteriaList

from xtune.chat.images import open_image, with_image_markers
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
        self,
        message: str,
        history: list[dict],
        system: str = "",
        settings: GenerationSettings | None = None,
        images: list[str | Path] | None = None,
    ) -> Iterator[str]:
        """Answer ``message`` after ``history`` (``{"role", "content"}`` dicts), yielding the answer so far.

        ``images`` are image files that go with ``message`` (where it writes ``<image>``, else before
        it); images in ``history`` are file parts of its user messages (Gradio's ``{"type": "file",
        "file": {"path": ...}}`` or ``{"path": ...}``), read again here.

        Raises:
            XtuneError: No model is loaded, an image cannot be read, images for a text-only model, or
                the template cannot render the conversation.
        """
        if self.loaded is None:
            raise XtuneError("no model loaded: pick one above and press Load.")
        loaded = self.loaded
        new_images = [open_image(path) for path in images or []]
        stop_words = template_stop_words(loaded.tokenizer, loaded.template)
        session = ChatSession(
            loaded.model,
            loaded.tokenizer,
            stop_words,
            system=system or None,
            settings=settings,
            processor=loaded.processor,
        )
        for turn in history:
            text, paths = _parts(turn["content"])
            if turn["role"] == "user" and paths:
                text = with_image_markers(text, len(paths))
                session.images += [open_image(path) for path in paths]
            session.history.append({"role": turn["role"], "content": text})
        # what ask will send, checked here (template, text-only model, markers) before a thread starts
        session.generator.prompt(
            session.messages(with_image_markers(message, len(new_images))),
            session.images + new_images,
            pixels=False,
        )
        pieces: queue.Queue = queue.Queue()
        failure: list[BaseException] = []
        done = object()
        cancelled = threading.Event()  # set when the page stops reading (Clear, a closed tab)

        def generate() -> None:
            try:
                with self._lock:
                    stopping = StoppingCriteriaList([StopOnEvent(cancelled)])
                    session.ask(message, stream=_QueueWriter(pieces), stopping_criteria=stopping, images=new_images)
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


def _parts(content) -> tuple[str, list[str]]:
    """The text and the image files of a message's content as Gradio hands it back: a string, or a list
    of parts (text parts and file parts, in the order shown)."""
    if isinstance(content, str):
        return content, []
    if isinstance(content, dict):
        content = [content]
    if not isinstance(content, list):
        return str(content), []
    text, paths = "", []
    for part in content:
        if isinstance(part, str):
            text += part
        elif isinstance(part, dict) and part.get("type", "text") == "text" and "text" in part:
            text += part["text"]
        elif isinstance(part, dict) and ("file" in part or "path" in part):
            file = part.get("file", part)
            paths.append(file["path"] if isinstance(file, dict) else str(file))
    return text, paths
