"""`xtune chat`: greedy answers are deterministic and asked through the training chat template."""

import builtins

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from xtune.cli import main
from xtune.dataset.templates import TEMPLATES

TOKENS = "12"


def _chat(capsys, *args) -> tuple[int, str, str]:
    status = main(["chat", *map(str, args)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _reference(model_dir, prompt: str, system: str | None = None) -> str:
    """Plain transformers: the prompt rendered by the saved chat template, greedy, special tokens dropped."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=int(TOKENS), do_sample=False)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()


def test_prompts_are_answered_greedily_through_the_chat_template(chat_models, capsys):
    args = [
        chat_models.merged,
        "--prompt",
        "Who are you?",
        "--prompt",
        "Hello",
        "--temperature",
        "0",
        "--max-new-tokens",
        TOKENS,
    ]
    status, first, _ = _chat(capsys, *args)
    assert status == 0
    assert _chat(capsys, *args)[1] == first  # deterministic
    expected = _reference(chat_models.merged, "Who are you?") + "\n" + _reference(chat_models.merged, "Hello") + "\n"
    assert first == expected and first.strip()


def test_system_prompt_is_rendered(chat_models, capsys):
    args = [chat_models.merged, "--prompt", "Who are you?", "--temperature", "0", "--max-new-tokens", TOKENS]
    status, out, _ = _chat(capsys, *args, "--system", "You are a pirate.")
    assert status == 0
    assert out.strip() == _reference(chat_models.merged, "Who are you?", system="You are a pirate.")


def test_adapter_and_checkpoint_answer_like_the_merged_model(chat_models, capsys):
    common = ["--prompt", "Who are you?", "--temperature", "0", "--max-new-tokens", TOKENS]
    merged = _chat(capsys, chat_models.merged, *common)[1]
    with_adapter = _chat(capsys, chat_models.run.base, "--adapter", chat_models.adapter, *common)
    from_checkpoint = _chat(
        capsys, "--config", chat_models.run.config, "--checkpoint", chat_models.run.checkpoint, *common
    )
    assert with_adapter[:2] == (0, merged)
    assert from_checkpoint[:2] == (0, merged)


def test_a_builtin_template_replaces_the_models_own(chat_models):
    from xtune.chat import ChatSession
    from xtune.chat.loading import load_model_for_chat
    from xtune.chat.stopping import template_stop_words

    loaded = load_model_for_chat(str(chat_models.merged), template="default", device="cpu")
    assert loaded.tokenizer.chat_template == TEMPLATES["default"].jinja
    words = template_stop_words(loaded.tokenizer, "auto")  # recognised as the built-in default
    assert "\nUser:" in words and loaded.tokenizer.eos_token in words
    session = ChatSession(loaded.model, loaded.tokenizer, words)
    session.history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    assert session.render("Who are you?").endswith(
        "User: Hi\nAssistant: Hello!<|im_end|>\nUser: Who are you?\nAssistant:"
    )


def test_interactive_session_streams_resets_and_exits(chat_models, capsys, monkeypatch):
    lines = iter(["Who are you?", "/reset", "Who are you?", "And then?", "/exit", "never read"])
    monkeypatch.setattr(builtins, "input", lambda prompt="": next(lines))
    status, out, err = _chat(capsys, chat_models.merged, "--temperature", "0", "--max-new-tokens", TOKENS)
    assert status == 0 and "/reset" in err and "conversation cleared" in err
    answer = _reference(chat_models.merged, "Who are you?")
    assert out.startswith(answer + "\n" + answer + "\n")  # streamed; the same after /reset
    assert next(lines) == "never read"  # /exit left


def test_ctrl_d_leaves(chat_models, capsys, monkeypatch):
    def end_of_input(prompt=""):
        raise EOFError

    monkeypatch.setattr(builtins, "input", end_of_input)
    assert _chat(capsys, chat_models.merged, "--temperature", "0")[0] == 0


def test_history_is_sent_in_later_turns(chat_models):
    from xtune.chat import ChatSession, GenerationSettings
    from xtune.chat.loading import load_model_for_chat

    loaded = load_model_for_chat(str(chat_models.merged), device="cpu")
    session = ChatSession(
        loaded.model,
        loaded.tokenizer,
        ["<|im_end|>"],
        settings=GenerationSettings(max_new_tokens=4, temperature=0),
    )
    first = session.ask("Who are you?")
    assert session.render("Next").count("<|im_start|>user") == 2
    assert first in session.render("Next")
    session.reset()
    assert session.render("Next").count("<|im_start|>user") == 1


@pytest.mark.parametrize(
    "args, words",
    [
        (["--bits", "4"], ["CUDA"]),
        (["--template", "no_such_template"], ["no_such_template", "chatml"]),
        (["--adapter", "/no/such/adapter"], ["adapter folder not found"]),
        (["--max-new-tokens", "0"], ["--max-new-tokens"]),
    ],
)
def test_bad_arguments_fail_clearly(chat_models, capsys, monkeypatch, args, words):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    status, _, err = _chat(capsys, chat_models.merged, "--prompt", "hi", *args)
    assert status == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith("xtune: error:") and all(word in last for word in words), last


def test_model_or_checkpoint_is_required(capsys):
    assert _chat(capsys, "--prompt", "hi")[0] == 2
    status, _, err = _chat(capsys, "--config", "x.py", "--prompt", "hi")
    assert status == 2 and "--checkpoint" in err


def test_base_model_without_template_needs_one(tiny_llama, tmp_path, capsys):
    import shutil

    shutil.copytree(tiny_llama, tmp_path / "base")
    (tmp_path / "base" / "chat_template.jinja").unlink()
    status, _, err = _chat(capsys, tmp_path / "base", "--prompt", "hi")
    assert status == 2 and "--template" in err
    status, out, _ = _chat(
        capsys,
        tmp_path / "base",
        "--prompt",
        "hi",
        "--template",
        "chatml",
        "--temperature",
        "0",
        "--max-new-tokens",
        "4",
    )
    assert status == 0 and out.endswith("\n")


def test_multi_token_stop_words_end_the_answer(chat_models, capsys):
    """The default template's "\\nUser:" is several tokens: generation stops on the text, which is cut."""
    args = [chat_models.merged, "--template", "default", "--prompt", "Who are you?", "--temperature", "0"]
    status, out, _ = _chat(capsys, *args, "--max-new-tokens", "24", "--stop-words", "e")
    assert status == 0 and "e" not in out and "User:" not in out


def test_a_shipped_model_answers_by_its_short_name(capsys):
    from xtune.paths import MODEL_DIR

    args = ["--prompt", "Hello", "--temperature", "0", "--max-new-tokens", "4"]
    status, by_name, _ = _chat(capsys, "tiny_llama", *args)
    assert status == 0 and by_name.strip()
    assert _chat(capsys, MODEL_DIR / "tiny_llama", *args)[1] == by_name
