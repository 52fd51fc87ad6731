"""``xtune serve`` on vision-language models: OpenAI ``image_url`` parts (data URLs, local files).

The app runs in-process (FastAPI's TestClient) over tiny random-init LLaVA and Qwen2.5-VL models; answers
are checked against ``xtune chat --image`` for the same image and prompt, which is itself checked against
plain transformers (tests/chat/test_chat_vision.py).
"""

import argparse
import base64
import json

import pytest
from fastapi.testclient import TestClient

from tests.vision_fixtures import QUESTION, TOKENS
from xtune.chat.loading import load_model_for_chat
from xtune.cli import main
from xtune.serve.app import create_app
from xtune.serve.engine import HFEngine
from xtune.serve.media import LocalMedia

MODEL = "vlm"


def _data_url(path, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64," + base64.b64encode(path.read_bytes()).decode()


def _image(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def _text(text: str) -> dict:
    return {"type": "text", "text": text}


@pytest.fixture(scope="module")
def apps(vision_models, tiny_llama):
    """(arch or 'text', 'any' | 'locked') -> a TestClient; 'locked' reads local files only under a folder
    that holds no test image. Engines are shared between the two apps of one model."""
    engines, clients = {}, {}
    for name, folder in [("llava", vision_models["llava"]), ("qwen2_5_vl", vision_models["qwen2_5_vl"])]:
        engines[name] = HFEngine(load_model_for_chat(str(folder), device="cpu"), max_concurrency=2)
    engines["text"] = HFEngine(load_model_for_chat(str(tiny_llama), device="cpu"), max_concurrency=1)
    locked = LocalMedia([vision_models.red.parent / "elsewhere"])
    for name, engine in engines.items():
        clients[name, "any"] = TestClient(create_app(engine, MODEL))
        clients[name, "locked"] = TestClient(create_app(engine, MODEL, local_media=locked))
    yield clients
    for engine in engines.values():
        engine.close()


def _body(content, **extra) -> dict:
    messages = [{"role": "user", "content": content}]
    return {"model": MODEL, "messages": messages, "temperature": 0, "max_tokens": TOKENS, **extra}


def _ask(client: TestClient, content, **extra):
    return client.post("/v1/chat/completions", json=_body(content, **extra))


def _answer(response) -> str:
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


def _chat_answer(capsys, folder, images, prompt: str) -> str:
    args = [folder, *[a for image in images for a in ("--image", image)], "--prompt", prompt]
    assert main(["chat", *map(str, args), "--temperature", "0", "--max-new-tokens", str(TOKENS)]) == 0
    return capsys.readouterr().out.strip()


@pytest.mark.parametrize("arch", ["llava", "qwen2_5_vl"])
def test_image_answer_equals_xtune_chat(apps, vision_models, capsys, arch):
    response = _ask(apps[arch, "any"], [_image(_data_url(vision_models.red)), _text(QUESTION)])
    expected = _chat_answer(capsys, vision_models[arch], [vision_models.red], QUESTION)
    assert _answer(response) == expected and expected
    usage = response.json()["usage"]
    text_only = _ask(apps[arch, "any"], QUESTION).json()["usage"]["prompt_tokens"]
    assert usage["prompt_tokens"] > text_only  # the image tokens are counted


def test_files_and_file_urls_read_the_same_images(apps, vision_models, capsys):
    client = apps["llava", "any"]
    by_data = _answer(_ask(client, [_image(_data_url(vision_models.red)), _text(QUESTION)]))
    assert _answer(_ask(client, [_image(str(vision_models.red)), _text(QUESTION)])) == by_data
    assert _answer(_ask(client, [_image(vision_models.red.as_uri()), _text(QUESTION)])) == by_data
    jpeg = _answer(_ask(client, [_image(_data_url(vision_models.blue, "image/jpeg")), _text(QUESTION)]))
    assert jpeg == _chat_answer(capsys, vision_models["llava"], [vision_models.blue], QUESTION) != by_data


def test_parts_keep_their_order(apps, vision_models, capsys):
    parts = [_text("Compare"), _image(str(vision_models.blue)), _text("with"), _image(str(vision_models.red))]
    answer = _answer(_ask(apps["qwen2_5_vl", "any"], parts))
    prompt = "Compare<image>with<image>"
    assert answer == _chat_answer(capsys, vision_models["qwen2_5_vl"], [vision_models.blue, vision_models.red], prompt)


def test_stream_adds_up_to_the_answer(apps, vision_models):
    client = apps["llava", "any"]
    content = [_image(_data_url(vision_models.red)), _text(QUESTION)]
    whole = _answer(_ask(client, content))
    with client.stream("POST", "/v1/chat/completions", json=_body(content, stream=True)) as response:
        assert response.status_code == 200
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"]) == whole


def _bad(name: str, vision_models, tmp_path) -> list[dict]:
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not an image")
    return {
        "http": [_image("https://example.com/cat.png"), _text(QUESTION)],
        "bad_base64": [_image("data:image/png;base64,@@not base64@@"), _text(QUESTION)],
        "not_an_image": [_image("data:image/png;base64," + base64.b64encode(b"plain text").decode())],
        "not_image_type": [_image("data:text/plain;base64," + base64.b64encode(b"plain text").decode())],
        "no_base64": [_image("data:image/png,raw")],
        "missing_file": [_image(str(tmp_path / "missing.png"))],
        "text_file": [_image(str(text_file))],
        "ftp": [_image("ftp://host/cat.png")],
        "no_url": [{"type": "image_url"}],
        "audio": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}],
        "marker_without_image": [_text("<image> what is this?")],
        "spelled_token": [_text("<|image_pad|> what is this?")],
    }[name]


@pytest.mark.parametrize(
    "name, words",
    [
        ("http", ["does not fetch", "data: URL"]),
        ("bad_base64", ["not valid base64"]),
        ("not_an_image", ["not an image"]),
        ("not_image_type", ["text/plain", "not an image"]),
        ("no_base64", ["base64"]),
        ("missing_file", ["image not found", "missing.png"]),
        ("text_file", ["notes.txt", "not an image"]),
        ("ftp", ["unsupported image URL scheme 'ftp:'"]),
        ("no_url", ["needs image_url"]),
        ("audio", ["reads text and images", "input_audio"]),
        ("marker_without_image", ["1 <image> marker(s) but 0 image(s)"]),
        ("spelled_token", ["image token"]),
    ],
)
def test_bad_images_are_400_and_the_server_stays_up(apps, vision_models, tmp_path, name, words):
    client = apps["qwen2_5_vl", "any"]
    response = _ask(client, _bad(name, vision_models, tmp_path))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"].startswith("messages")
    assert all(word in error["message"] for word in words), error["message"]
    assert _ask(client, [_image(_data_url(vision_models.red)), _text(QUESTION)]).status_code == 200


def test_local_files_outside_the_allowed_folders_are_refused(apps, vision_models):
    client = apps["llava", "locked"]
    response = _ask(client, [_image(str(vision_models.red)), _text(QUESTION)])
    assert response.status_code == 400 and "--allowed-local-media-path" in response.json()["error"]["message"]
    assert _ask(client, [_image(_data_url(vision_models.red)), _text(QUESTION)]).status_code == 200


def test_images_for_a_text_model_are_400(apps, vision_models):
    response = _ask(apps["text", "any"], [_image(_data_url(vision_models.red)), _text(QUESTION)])
    assert response.status_code == 400
    assert "reads text only" in response.json()["error"]["message"]
    assert _ask(apps["text", "any"], [_text(QUESTION)]).status_code == 200  # text parts still work


def test_images_in_an_assistant_turn_are_400(apps, vision_models):
    messages = [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": [_image(_data_url(vision_models.red))]},
        {"role": "user", "content": QUESTION},
    ]
    response = apps["llava", "any"].post("/v1/chat/completions", json={"model": MODEL, "messages": messages})
    assert response.status_code == 400 and "images belong in user turns" in response.json()["error"]["message"]


def test_completions_refuse_the_image_token(apps):
    client = apps["llava", "any"]
    response = client.post("/v1/completions", json={"model": MODEL, "prompt": "<image> hi", "max_tokens": 2})
    assert response.status_code == 400 and response.json()["error"]["param"] == "prompt"
    assert client.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 2}).status_code == 200


def test_local_media_defaults_follow_the_host(tmp_path):
    from xtune.cli.serve import local_media_roots

    def args(host, folders=None):
        return argparse.Namespace(host=host, allowed_local_media_path=folders)

    assert local_media_roots(args("127.0.0.1")) is None  # this machine only: any file
    assert local_media_roots(args("0.0.0.0")) == []  # others can connect: none
    assert local_media_roots(args("0.0.0.0", [str(tmp_path)])) == [str(tmp_path)]
    # and the folder check: a symlink out of an allowed folder does not get out
    (tmp_path / "ok").mkdir()
    (tmp_path / "secret.png").write_bytes(b"x")
    (tmp_path / "ok" / "link.png").symlink_to(tmp_path / "secret.png")
    from xtune.serve.protocol import APIError

    with pytest.raises(APIError, match="allowed-local-media-path"):
        LocalMedia([tmp_path / "ok"]).check(tmp_path / "ok" / "link.png", "messages.0.content")


def test_allowed_local_media_path_is_checked_and_passed_to_vllm(tiny_llama, capsys, tmp_path):
    from xtune.serve.vllm_backend import vllm_command

    assert main(["serve", str(tiny_llama), "--allowed-local-media-path", str(tmp_path / "nope")]) == 2
    assert "--allowed-local-media-path" in capsys.readouterr().err
    args = argparse.Namespace(
        model="llava",
        adapter=None,
        host="127.0.0.1",
        port=8000,
        dtype="bf16",
        max_concurrency=2,
        trust_remote_code=False,
        allowed_local_media_path=[str(tmp_path)],
    )
    assert f"--allowed-local-media-path {tmp_path}" in " ".join(vllm_command(args, "tuned", None))


def _huge_png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels in a few bytes (no pixel data)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


def test_huge_images_are_refused_before_decoding(apps, tmp_path):
    # 72 M pixels: under PIL's own bomb limit, over the 64 M read here
    data = "data:image/png;base64," + base64.b64encode(_huge_png_header(9000, 8000)).decode()
    response = _ask(apps["llava", "any"], [_image(data), _text(QUESTION)])
    assert response.status_code == 400 and "9000 x 8000 pixels" in response.json()["error"]["message"]


def test_too_many_image_tokens_are_refused_before_the_image_processor_runs(apps, vision_models, monkeypatch):
    from xtune.hf.vision import VisionProcessor

    client = apps["llava", "any"]
    calls = []
    original = VisionProcessor.pixels

    def counted(self, images):
        calls.append(len(images))
        return original(self, images)

    monkeypatch.setattr(VisionProcessor, "pixels", counted)
    many = [_image(_data_url(vision_models.red))] * 130  # 16 tokens each: past the 2048-token context
    response = _ask(client, [*many, _text(QUESTION)])
    assert response.status_code == 400 and response.json()["error"]["code"] == "context_length_exceeded"
    assert calls == []  # measured, never processed
    assert _answer(_ask(client, [_image(_data_url(vision_models.red)), _text(QUESTION)])) and calls == [1]
