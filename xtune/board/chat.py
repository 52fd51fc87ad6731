"""The Chat tab's model: loaded with :mod:`xtune.chat.loading`, answered by :class:`ChatSession`.

The page's chat history is the conversation: each message builds a session over it, so clearing the
history on the page is all "clear" needs. Answers stream: ``ChatSession.ask`` writes the text as it is
generated into a queue that the page reads.

Images (vision-language models): a user message on the page holds its image files beside its text. Each
message rebuilds the session's images from the history in message order, and a message's text gets its
images' ``<image>`` markers exactly as :meth:`ChatSession.ask` wrote them when that turn was asked
(:func:`xtune.chat.images.with_image_markers`), so a conversation on the page is the one ``xtune chat``
would have had.

Only files Gradio itself holds are read as images: its upload folder (``GRADIO_TEMP_DIR``, else
``<tmp>/gradio``: ``gradio.utils.get_upload_folder()``), where the page's uploads and the files of the
chat history it shows are kept. The history comes back from the browser, so it may name any path on the
server (``/etc/passwd``, another user's upload folder); each path is resolved with its symlinks followed
and refused, before it is opened, unless it lies in that folder. (Gradio checks the files a page posts
too; this check does not rely on it: it holds for any caller and any shape of file part.)
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


def upload_folder() -> Path:
    """Gradio's folder for the files it received and serves (its uploads and its cache), resolved."""
    from gradio.utils import get_upload_folder  # the board's dependency; read when asked: GRADIO_TEMP_DIR may change

    return Path(get_upload_folder()).resolve()


class BoardChat:
    """The model the Chat tab talks to; one at a time, replaced by each Load.

    Args:
        image_folder: The only folder images are read from (files under it, symlinks followed); None:
            Gradio's upload folder (:func:`upload_folder`), which is where the page's images are.
    """

    def __init__(self, image_folder: str | Path | None = None) -> None:
        self.image_folder = image_folder
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
            XtuneError: No model is loaded, an image is outside :attr:`image_folder` or cannot be read,
                images for a text-only model, or the template cannot render the conversation.
        """
        if self.loaded is None:
            raise XtuneError("no model loaded: pick one above and press Load.")
        loaded = self.loaded
        new_images = [self._open_image(path) for path in images or []]
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
                session.images += [self._open_image(path) for path in paths]
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

    def _open_image(self, path: str | Path):
        """The image at ``path``, read only when the path, symlinks followed, lies in :attr:`image_folder`.

        Raises:
            XtuneError: The path is outside the folder (it was not uploaded on the page), or unreadable.
        """
        folder = Path(self.image_folder).resolve() if self.image_folder is not None else upload_folder()
        try:
            # no expanduser: "~" is a name here, not the board's home folder
            file = Path(str(path)).resolve()
        except (OSError, RuntimeError):  # a symlink loop (RuntimeError before Python 3.13)
            file = None
        if file is None or not file.is_relative_to(folder):
            raise XtuneError(
                f"image {path} was not uploaded to this board: the chat reads only images uploaded on the "
                f"page (kept in {folder}). Upload the image again, or clear the history that names it."
            )
        return open_image(file)


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
