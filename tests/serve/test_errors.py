"""Bad requests get OpenAI-shaped errors with the right status, and the server stays up."""

import openai
import pytest

from tests.serve.conftest import MODEL, http

USER = [{"role": "user", "content": "Hi"}]
SHAPE = {"message", "type", "param", "code"}


def _error(exc: openai.APIStatusError) -> dict:
    body = exc.response.json()
    assert set(body) == {"error"} and set(body["error"]) == SHAPE, body
    assert body["error"]["message"]
    return body["error"]


@pytest.mark.parametrize(
    "kwargs, status, param",
    [
        ({"model": "no-such-model"}, 404, "model"),
        ({"messages": []}, 400, "messages"),
        ({"messages": [{"role": "wizard", "content": "Hi"}]}, 400, "messages.0.role"),
        ({"messages": [{"role": "user"}]}, 400, "messages.0"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400, "messages.0.content"),
        ({"temperature": 2.5}, 400, "temperature"),
        ({"temperature": -1}, 400, "temperature"),
        ({"top_p": 0}, 400, "top_p"),
        ({"max_tokens": 0}, 400, "max_tokens"),
        ({"max_tokens": 1501}, 400, "max_tokens"),  # over the server's --max-new-tokens
        ({"max_tokens": "many"}, 400, "max_tokens"),
        ({"n": 2}, 400, "n"),
        ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        ({"presence_penalty": 0.5}, 400, "presence_penalty"),
        ({"tool_choice": "required", "tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tool_choice"),
        ({"tools": [{"type": "function", "function": {}}]}, 400, "tools.0.function.name"),
        ({"messages": [{"role": "user", "content": "Hi " * 2100}]}, 400, "messages"),  # prompt over the context
        ({"max_tokens": 1400, "messages": [{"role": "user", "content": "Hi " * 700}]}, 400, "messages"),
    ],
)
def test_bad_chat_requests(client, kwargs, status, param):
    request = {"model": MODEL, "messages": USER, "max_tokens": 4, **kwargs}
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(**request)
    assert caught.value.status_code == status
    error = _error(caught.value)
    assert error["param"] == param, error
    assert error["type"] == ("invalid_request_error" if status == 400 else error["type"])


def test_context_errors_say_so(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi " * 2100}])
    error = _error(caught.value)
    assert error["code"] == "context_length_exceeded" and "2048" in error["message"]


def test_bad_completion_requests(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL, prompt=["one", "two"], max_tokens=2)
    assert _error(caught.value)["param"] == "prompt"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="other", prompt="x", max_tokens=2)


@pytest.mark.parametrize(
    "method, path, body, status, code",
    [
        ("POST", "/v1/chat/completions", b"{not json", 400, "invalid_json"),
        ("POST", "/v1/chat/completions", b"[1, 2]", 400, "invalid_json"),
        ("POST", "/v1/chat/completions", b"\xff\xfe", 400, "invalid_json"),
        ("POST", "/v1/chat/completions", b'{"model": "tiny"}', 400, "invalid_value"),
        ("POST", "/v1/completions", b'{"max_tokens": 3}', 400, "invalid_value"),
        ("GET", "/v1/chat/completions", None, 405, None),
        ("GET", "/v1/no/such/path", None, 404, None),
        ("GET", "/v1/models/other", None, 404, "model_not_found"),
    ],
)
def test_raw_http_errors(server, method, path, body, status, code):
    got, answer = http(method, server.root + path, body)
    assert got == status
    assert set(answer) == {"error"} and set(answer["error"]) == SHAPE and answer["error"]["code"] == code


def test_a_body_over_the_limit_is_refused_before_it_is_read(server):
    import http.client
    import json
    from urllib.parse import urlsplit

    address = urlsplit(server.url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
    connection.putrequest("POST", "/v1/chat/completions")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(9 * 1024 * 1024))
    connection.endheaders()  # the 9 MiB never follow: the server must answer from the header alone
    response = connection.getresponse()
    assert response.status == 413
    assert json.loads(response.read())["error"]["code"] == "request_too_large"
    connection.close()


def test_server_is_healthy_after_bad_requests(client, server):
    test_bad_chat_requests(client, {"temperature": 9}, 400, "temperature")
    assert http("GET", f"{server.root}/health") == (200, {**http("GET", f"{server.root}/health")[1], "status": "ok"})
    response = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=3, temperature=0)
    assert response.choices[0].finish_reason in ("stop", "length") and response.usage.completion_tokens >= 1
    assert http("GET", f"{server.root}/health")[1]["failed"] == 0
    assert server.process.poll() is None
