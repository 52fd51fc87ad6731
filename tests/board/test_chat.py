"""The Chat tab's streaming over xtune.chat (no browser)."""

import pytest

from xtune.board.chat import SOURCES, BoardChat
from xtune.chat.loading import load_model_for_chat
from xtune.chat.session import ChatSession, GenerationSettings
from xtune.chat.stopping import template_stop_words
from xtune.errors import XtuneError

GREEDY = GenerationSettings(max_new_tokens=12, temperature=0)


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
