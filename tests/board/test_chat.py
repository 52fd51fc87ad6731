"""The Chat tab's streaming over xtune.chat (no browser)."""

import time

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
