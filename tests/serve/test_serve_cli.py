"""``xtune serve`` as a command: a training checkpoint behind an API key, clean stops, argument errors, vLLM."""

import argparse
import signal
import socket
import threading

import openai
import pytest

from tests.serve.conftest import http, start_server
from xtune.cli import main

KEY = "s3cret-key"


def _serve(capsys, *args) -> tuple[int, str]:
    status = main(["serve", *map(str, args)])
    return status, capsys.readouterr().err.strip()


def test_checkpoint_behind_an_api_key_answers_like_xtune_chat_and_stops_on_sigterm(chat_models, tmp_path, capsys):
    run = chat_models.run
    server = start_server(
        ["--config", run.config, "--checkpoint", run.checkpoint], tmp_path, env={"XTUNE_API_KEY": KEY}
    )
    try:
        assert server.url.startswith("http://127.0.0.1:")
        assert "Authorization: Bearer $XTUNE_API_KEY" in server.out.read_text()
        name = "tiny_llama_lora_identity_e3"  # the config's name, by default
        assert http("GET", f"{server.root}/health")[0] == 200  # probes need no key
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
            status, body = http("GET", f"{server.url}/models", headers=headers)
            assert status == 401 and body["error"]["code"] == "invalid_api_key", (headers, body)
        with pytest.raises(openai.AuthenticationError) as caught:
            openai.OpenAI(base_url=server.url, api_key="wrong", max_retries=0).models.list()
        assert (
            caught.value.status_code == 401 and caught.value.response.json()["error"]["type"] == "authentication_error"
        )

        client = openai.OpenAI(base_url=server.url, api_key=KEY, max_retries=0, timeout=120)
        answer = client.chat.completions.create(
            model=name, messages=[{"role": "user", "content": "Who are you?"}], temperature=0, max_tokens=12
        )
        args = ["--config", run.config, "--checkpoint", run.checkpoint, "--prompt", "Who are you?"]
        assert main(["chat", *map(str, args), "--temperature", "0", "--max-new-tokens", "12"]) == 0
        assert answer.choices[0].message.content == capsys.readouterr().out.strip()

        # SIGTERM while a long generation streams: it is ended, and the server exits cleanly.
        def long_stream():
            stream = client.chat.completions.create(
                model=name,
                messages=[{"role": "user", "content": "Tell me everything."}],
                stream=True,
                max_tokens=2000,
                extra_body={"ignore_eos": True},
            )
            try:
                for _ in stream:
                    pass
            except openai.APIError:
                pass  # the connection may close mid-stream: that is the point

        streaming = threading.Thread(target=long_stream)
        streaming.start()
        while http("GET", f"{server.root}/health")[1]["running"] == 0:
            pass
        assert server.stop(signal.SIGTERM) == 0
        streaming.join(timeout=60)
        assert not streaming.is_alive()
        assert "xtune: server stopped" in server.err.read_text()
    finally:
        if server.process.poll() is None:
            server.process.kill()


def test_the_served_name_defaults_to_the_folder_or_config_name():
    from xtune.cli.serve import model_name

    def name(**given) -> str:
        fields = {"served_model_name": None, "adapter": None, "config": None, "model": None}
        return model_name(argparse.Namespace(**{**fields, **given}))

    assert name(model="Qwen/Qwen2.5-0.5B-Instruct") == "Qwen2.5-0.5B-Instruct"
    assert name(model="/m/base/", adapter="/runs/my_adapter/") == "my_adapter"
    assert name(config="work/tiny_lora.py") == "tiny_lora"
    assert name(model="x", served_model_name="chosen") == "chosen"


@pytest.mark.parametrize(
    "args, words",
    [
        (["--host", "0.0.0.0"], ["--api-key", "XTUNE_API_KEY"]),
        (["--max-concurrency", "0"], ["--max-concurrency"]),
        (["--max-new-tokens", "0"], ["--max-new-tokens"]),
        (["--port", "70000"], ["--port"]),
        (["--config", "x.py"], ["--checkpoint"]),
    ],
)
def test_bad_arguments_fail_in_one_line(tiny_llama, capsys, monkeypatch, args, words):
    monkeypatch.delenv("XTUNE_API_KEY", raising=False)
    status, err = _serve(capsys, tiny_llama, *args)
    assert status == 2 and len(err.splitlines()) == 1 and err.startswith("xtune: error:")
    assert all(word in err for word in words), err


def test_a_busy_port_fails_before_loading(tiny_llama, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        status, err = _serve(capsys, tiny_llama, "--port", busy.getsockname()[1])
    assert status == 2 and "cannot listen" in err and "--port" in err


def test_vllm_backend_without_vllm_says_how_to_install_it(tiny_llama, capsys, monkeypatch):
    import xtune.serve.vllm_backend as backend

    monkeypatch.setattr(backend.importlib.util, "find_spec", lambda name: None)
    status, err = _serve(capsys, tiny_llama, "--backend", "vllm")
    assert status == 2 and err.splitlines() == [f"xtune: error: {backend.INSTALL_HINT}"]
    assert "pip install vllm" in err


def test_vllm_command_carries_the_adapter_template_and_limits():
    from xtune.serve.vllm_backend import vllm_command

    args = argparse.Namespace(
        model="base",
        adapter="my_adapter",
        host="127.0.0.1",
        port=8000,
        dtype="bf16",
        max_concurrency=8,
        trust_remote_code=False,
    )
    command = vllm_command(args, "tuned", "/tmp/template.jinja")
    assert command[1:4] == ["-m", "vllm.entrypoints.openai.api_server", "--model"]
    text = " ".join(command)
    assert "--enable-lora --lora-modules tuned=my_adapter" in text
    assert "--chat-template /tmp/template.jinja" in text and "--dtype bfloat16" in text
    assert "--max-num-seqs 8" in text and "--port 8000" in text
    merged = vllm_command(argparse.Namespace(**{**vars(args), "adapter": None}), "tuned", None)
    assert "--served-model-name tuned" in " ".join(merged) and "--enable-lora" not in merged
