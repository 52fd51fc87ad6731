"""A real ``xtune serve`` process on a free loopback port, started once and shared by the API tests."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODEL = "tiny"
READY_TIMEOUT_S = 180  # loading torch + transformers on a busy 2-core CI machine
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@dataclass
class Server:
    """A running server: its base URL (``.../v1``), process and log files."""

    url: str
    process: subprocess.Popen
    out: Path
    err: Path

    @property
    def root(self) -> str:
        return self.url[: -len("/v1")]

    def log(self) -> str:
        return self.out.read_text() + self.err.read_text()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)


def start_server(args: list, log_dir: Path, env: dict | None = None) -> Server:
    """``python -m xtune serve ARGS --port 0``; returns once the ready line (with the URL) is printed."""
    log_dir.mkdir(parents=True, exist_ok=True)
    out, err = log_dir / "stdout.txt", log_dir / "stderr.txt"
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    with open(out, "w") as stdout, open(err, "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "xtune", "serve", *map(str, args), "--port", "0"],
            stdout=stdout,
            stderr=stderr,
            env=environment,
            cwd=ROOT,
        )
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        text = out.read_text()
        if "curl " in text:
            url = next(word for word in text.split() if word.startswith("http://") and word.endswith("/v1"))
            return Server(url, process, out, err)
        if process.poll() is not None:
            raise RuntimeError(f"xtune serve exited with {process.returncode}:\n{err.read_text()[-3000:]}")
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"xtune serve was not ready in {READY_TIMEOUT_S}s:\n{err.read_text()[-3000:]}")


def http(method: str, url: str, body: bytes | dict | None = None, headers: dict | None = None, timeout: float = 60):
    """A raw HTTP request (for what the openai client would not send); returns (status, parsed JSON)."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    for key, value in (headers or {}).items():
        request.add_header(key, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture(scope="session")
def server(chat_models, tmp_path_factory):
    """The tiny base model plus the trained LoRA adapter, served as ``tiny`` (one process for the session:
    starting one takes seconds on CI)."""
    running = start_server(
        [
            chat_models.run.base,
            "--adapter",
            chat_models.adapter,
            "--served-model-name",
            MODEL,
            "--max-concurrency",
            "3",
            "--max-new-tokens",
            "1500",
        ],
        tmp_path_factory.mktemp("serve_logs"),
    )
    yield running
    assert running.stop(signal.SIGINT) == 0  # Ctrl-C stops the server cleanly
    assert "xtune: server stopped" in running.err.read_text()


@pytest.fixture(scope="session")
def client(server):
    import openai

    return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=120)


from tests.vision_fixtures import vision_models  # noqa: E402, F401  (tiny VLM folders and images)
