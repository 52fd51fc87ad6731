"""The Chat tab's streaming over xtune.chat (no browser)."""

import re
import shutil
import time
from pathlib import Path

import pytest

from tests.vision_fixtures import QUESTION, TOKENS, reference_answer
from xtune.board.chat import SOURCES, BoardChat
from xtune.chat.images import open_image
from xtune.chat.loading import load_model_for_chat
from xtune.chat.session import ChatSession, GenerationSettings
from xtune.chat.stopping import template_stop_words
from xtune.cli import main
from xtune.errors import XtuneError

GREEDY = GenerationSettings(max_new_tokens=12, temperature=0)
VISION_GREEDY = GenerationSettings(max_new_tokens=TOKENS, temperature=0)
CLI_GREEDY = ["--temperature", "0", "--max-new-tokens", str(TOKENS)]


def test_streamed_answers_grow_and_end_as_chat_sessions_answer(tiny_llama):
    chat = BoardChat()
    assert chat.load(SOURCES[0], model=str(tiny_llama), template="chatml") == f"loaded {tiny_llama}"
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    parts = list(chat.stream("Who are you?", history, "Be brief.", GREEDY))
    assert all(parts[i + 1].startswith(parts[i].rstrip()) for i in range(len(parts) - 2))

    loaded = load_model_for_chat(str(tiny_llama), template="chatml")
    session = ChatSession(
        loaded.model,
        loaded.tokenizer,
        template_stop_words(loaded.tokenizer, "chatml"),
        system="Be brief.",
        settings=GREEDY,
    )
    session.history = list(history)
    assert parts[-1] == session.ask("Who are you?")


def test_chat_without_a_model_or_paths_says_what_is_missing(tmp_path):
    chat = BoardChat()
    with pytest.raises(XtuneError, match="no model loaded"):
        next(chat.stream("hi", []))
    with pytest.raises(XtuneError, match="needs its run's config and a checkpoint"):
        chat.load(SOURCES[2])
    with pytest.raises(XtuneError, match="does not exist"):
        chat.load(SOURCES[2], config=str(tmp_path / "c.py"), checkpoint=str(tmp_path / "iter_1.pth"))
    with pytest.raises(XtuneError, match="give the adapter folder"):
        chat.load(SOURCES[1], model="x")


def test_a_closed_stream_ends_its_generation_and_frees_the_model(tiny_llama):
    """Clear on the page closes the answer's stream: generation must stop, not run to max_new_tokens."""
    chat = BoardChat()
    chat.load(SOURCES[0], model=str(tiny_llama), template="chatml")
    model = chat.loaded.model
    token = chat.loaded.tokenizer.convert_tokens_to_ids("a")
    calls = []

    def always_the_same_token(module, args, output):
        calls.append(1)
        time.sleep(0.005)  # 400 steps take 2 s at least: a stream closed after its first piece ends far sooner
        output.logits.fill_(0.0)
        output.logits[..., token] = 10.0  # never EOS nor a stop word: only the cancellation can end it early
        return output

    handle = model.register_forward_hook(always_the_same_token)
    try:
        stream = chat.stream("Who are you?", [], "", GenerationSettings(max_new_tokens=400, temperature=0))
        assert next(stream)
        stream.close()
        assert chat._lock.acquire(timeout=30)  # the generation thread let go of the model
        chat._lock.release()
        assert 1 <= len(calls) < 100

        calls.clear()
        whole = list(chat.stream("Who are you?", [], "", GenerationSettings(max_new_tokens=40, temperature=0)))
        assert len(calls) == 40 and whole[-1]  # not cancelled: runs to max_new_tokens
    finally:
        handle.remove()


def _vision_session(loaded, settings=VISION_GREEDY) -> ChatSession:
    stop_words = template_stop_words(loaded.tokenizer, loaded.template)
    return ChatSession(loaded.model, loaded.tokenizer, stop_words, settings=settings, processor=loaded.processor)


def _page_turn(text: str, *paths) -> dict:
    """A user message as the page hands it back: Gradio's file parts (the images) before the text part."""
    files = [{"type": "file", "file": {"path": str(path), "orig_name": Path(path).name}} for path in paths]
    return {"role": "user", "content": [*files, {"type": "text", "text": text}]}


@pytest.mark.parametrize("arch", ["llava", "qwen2_5_vl"])
def test_an_image_turn_answers_as_xtune_chat_with_the_image(vision_models, capsys, arch):
    folder = vision_models[arch]
    chat = BoardChat(image_folder=vision_models.red.parent)  # the test images stand for uploads
    chat.load(SOURCES[0], model=str(folder), device="cpu")
    parts = list(chat.stream(QUESTION, [], "", VISION_GREEDY, images=[vision_models.red]))

    status = main(["chat", str(folder), "--image", str(vision_models.red), "--prompt", QUESTION, *CLI_GREEDY])
    assert status == 0
    cli = capsys.readouterr().out
    assert cli == parts[-1] + "\n" and parts[-1]
    # and plain transformers' answer: the image goes before the text, as `xtune chat` puts it
    red = open_image(vision_models.red)
    assert parts[-1] == reference_answer(folder, [{"role": "user", "content": "<image>" + QUESTION}], [red])
    # the pixels are read: the other image answers otherwise
    assert list(chat.stream(QUESTION, [], "", VISION_GREEDY, images=[vision_models.blue]))[-1] != parts[-1]


def test_later_turns_keep_the_earlier_images_in_order(vision_models):
    folder = vision_models["qwen2_5_vl"]
    chat = BoardChat(image_folder=vision_models.red.parent)
    chat.load(SOURCES[0], model=str(folder), device="cpu")
    red, blue = open_image(vision_models.red), open_image(vision_models.blue)
    session = _vision_session(chat.loaded)
    first = session.ask(QUESTION, images=[red])
    second = session.ask("And this one?", images=[blue])
    third = session.ask("Say it again.")

    history = [
        _page_turn(QUESTION, vision_models.red),
        {"role": "assistant", "content": [{"type": "text", "text": first}]},
    ]
    assert list(chat.stream("And this one?", history, "", VISION_GREEDY, images=[vision_models.blue]))[-1] == second
    history += [_page_turn("And this one?", vision_models.blue), {"role": "assistant", "content": second}]
    assert list(chat.stream("Say it again.", history, "", VISION_GREEDY))[-1] == third

    # the history's images are read, in their order: the same turns with the images swapped answer otherwise
    swapped = _vision_session(chat.loaded)
    swapped.ask(QUESTION, images=[blue])
    swapped.ask("And this one?", images=[red])
    assert swapped.ask("Say it again.") != third


def test_an_image_for_a_text_model_is_one_clear_error_and_chat_goes_on(tiny_llama, vision_models):
    chat = BoardChat(image_folder=vision_models.red.parent)
    chat.load(SOURCES[0], model=str(tiny_llama), template="chatml")
    with pytest.raises(XtuneError, match="reads text only"):
        next(chat.stream("Who are you?", [], "", GREEDY, images=[vision_models.red]))
    with pytest.raises(XtuneError, match="reads text only"):  # an image earlier in the page's history
        next(chat.stream("Who are you?", [_page_turn("Hi", vision_models.red)], "", GREEDY))
    assert chat._lock.acquire(timeout=1)  # no generation was started
    chat._lock.release()
    assert list(chat.stream("Who are you?", [], "", GREEDY))[-1]  # the board keeps answering text


def test_images_outside_gradios_upload_folder_are_refused_before_they_are_read(
    tiny_llama, vision_models, tmp_path, monkeypatch
):
    """The browser sends the history back, so a file part may name any path on the server: only files in
    Gradio's upload folder (symlinks followed) are opened, for history and new images alike."""
    uploads = tmp_path / "gradio"
    (uploads / "0a1b").mkdir(parents=True)
    inside = uploads / "0a1b" / "red.png"  # where Gradio keeps an upload: a hashed folder in its upload folder
    shutil.copy(vision_models.red, inside)
    shutil.copy(vision_models.red, tmp_path / "secret.png")
    (uploads / "link.png").symlink_to(vision_models.red)
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(uploads))
    chat = BoardChat()  # as the board makes it: Gradio's upload folder
    chat.load(SOURCES[0], model=str(tiny_llama), template="chatml")
    opened = []
    monkeypatch.setattr("xtune.board.chat.open_image", lambda path: opened.append(path) or open_image(path))

    outside = [vision_models.red, "/etc/passwd", uploads / "link.png", f"{uploads}/../secret.png", "red.png"]
    for path in outside:
        refused = (
            f"image {re.escape(str(path))} was not uploaded to this board: .* \\(kept in {re.escape(str(uploads))}\\)"
        )
        with pytest.raises(XtuneError, match=refused):
            next(chat.stream("Who are you?", [_page_turn("Hi", path)], "", GREEDY))
        with pytest.raises(XtuneError, match=refused):
            next(chat.stream("Who are you?", [], "", GREEDY, images=[path]))
    assert opened == []  # refused before anything was read
    # a file in the folder is read: this text model then refuses it for what it is
    with pytest.raises(XtuneError, match="reads text only"):
        next(chat.stream("Who are you?", [_page_turn("Hi", inside)], "", GREEDY))
    assert opened == [inside]
    assert chat._lock.acquire(timeout=1)  # no generation was started
    chat._lock.release()


def test_the_page_shows_a_refused_image_and_keeps_the_history(tiny_llama, tmp_path, monkeypatch):
    from xtune.board.app import build_app

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    demo, board = build_app(tmp_path / "runs")
    board.chat.load(SOURCES[0], model=str(tiny_llama), template="chatml")
    respond = next(fn.fn for fn in demo.fns.values() if fn.name == "respond")
    history = [_page_turn("Hi", "/etc/passwd"), {"role": "assistant", "content": "Hello."}]
    [(shown, text, picture, status)] = list(respond("Who are you?", None, history, "", 0, 0.9, 50, 12, 1.0))
    assert (shown, text, picture) == (history, "Who are you?", None)  # nothing lost: the message can be sent again
    assert status.startswith("**error:** image /etc/passwd was not uploaded to this board")
    assert "clear the history that names it" in status
