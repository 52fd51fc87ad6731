"""Stop words end answers, and streaming never prints them."""

import io

import pytest
from transformers import AutoTokenizer

from xtune.chat.stopping import StopWordStreamer, cut_at_stop, stop_token_ids, template_stop_words
from xtune.dataset.templates import TEMPLATES
from xtune.testing import tiny_tokenizer_dir


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir())


def _stream(tokenizer, chunks: list[str], words: list[str]) -> str:
    out = io.StringIO()
    streamer = StopWordStreamer(tokenizer, words, out=out)
    for chunk in chunks:
        streamer.on_finalized_text(chunk)
    streamer.on_finalized_text("", stream_end=True)
    return out.getvalue()


def test_stream_stops_at_a_stop_word_split_over_chunks(tokenizer):
    assert _stream(tokenizer, [" Hello", " wor", "ld\nUs", "er: more", " and more"], ["\nUser:"]) == "Hello world\n"


def test_stream_releases_text_that_only_looked_like_a_stop_word(tokenizer):
    out = io.StringIO()
    streamer = StopWordStreamer(tokenizer, ["\nUser:"], out=out)
    streamer.on_finalized_text("a\nU")
    assert out.getvalue() == "a"  # "\nU" may begin "\nUser:": held back
    streamer.on_finalized_text("nits")
    assert out.getvalue() == "a\nUnits"
    streamer.on_finalized_text("", stream_end=True)
    assert out.getvalue() == "a\nUnits\n"


def test_streamer_decodes_tokens(tokenizer):
    out = io.StringIO()
    streamer = StopWordStreamer(tokenizer, ["<|im_end|>"], out=out)
    import torch

    streamer.put(torch.tensor([tokenizer.encode("prompt", add_special_tokens=False)]))  # the prompt: skipped
    for token in tokenizer.encode(" Who are you?", add_special_tokens=False):
        streamer.put(torch.tensor([token]))
    streamer.end()
    assert out.getvalue() == "Who are you?\n"


def test_cut_at_stop():
    assert cut_at_stop("abc<|im_end|>def\nUser:", ["\nUser:", "<|im_end|>"]) == "abc"
    assert cut_at_stop("abc", ["\nUser:"]) == "abc"
    assert cut_at_stop("abc", []) == "abc"


def test_template_stop_words(tokenizer):
    assert template_stop_words(tokenizer, "llama3", ["###"])[-1] == "###"
    assert template_stop_words(tokenizer, "default")[:1] == ["\nUser:"]
    own = template_stop_words(tokenizer, "auto")
    assert "<|im_end|>" in own and len(own) == len(set(own))
    other = AutoTokenizer.from_pretrained(tiny_tokenizer_dir())
    other.chat_template = TEMPLATES["default"].jinja
    assert "\nUser:" in template_stop_words(other, "auto")


def test_only_single_token_words_become_ids(tokenizer):
    ids = stop_token_ids(tokenizer, ["<|im_end|>", "\nUser:"])
    assert ids == [tokenizer.convert_tokens_to_ids("<|im_end|>")]
