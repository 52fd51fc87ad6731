"""Throughput of ``xtune serve``: requests/s and output tokens/s for 1, 4 and 16 concurrent clients.

Starts ``xtune serve`` (or uses a running server, ``--url``), then for each client count C runs C
threads that each send ``--requests`` streamed chat requests through the ``openai`` client, with
``ignore_eos`` so every answer is exactly ``--max-tokens`` tokens long. Output tokens come from the
server's ``usage``; time to first token is measured at the first content chunk. Numbers are wall-clock
over all requests of a level; warm-up requests before the first level are not counted.

Examples::

    python benchmarks/serve_speed.py                                  # shipped tiny model, CPU
    python benchmarks/serve_speed.py --model Qwen/Qwen2.5-0.5B-Instruct --device cuda --max-concurrency 16
    python benchmarks/serve_speed.py --url http://127.0.0.1:8000/v1 --name tiny --clients 1,2
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def start_server(args: argparse.Namespace, log_dir: Path) -> tuple[subprocess.Popen, str]:
    """``xtune serve`` on a free port; returns the process and base URL once it is ready."""
    command = [sys.executable, "-m", "xtune", "serve", args.model, "--port", "0", "--served-model-name", args.name]
    command += ["--max-concurrency", str(args.max_concurrency), "--device", args.device, "--dtype", args.dtype]
    if args.adapter:
        command += ["--adapter", args.adapter]
    out, err = log_dir / "stdout.txt", log_dir / "stderr.txt"
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    with open(out, "w") as stdout, open(err, "w") as stderr:
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, env=env, cwd=REPO)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        words = out.read_text().split()
        urls = [word for word in words if word.startswith("http://") and word.endswith("/v1")]
        if "curl" in words and urls:
            return process, urls[0]
        if process.poll() is not None:
            sys.exit(f"xtune serve exited with {process.returncode}:\n{err.read_text()[-3000:]}")
        time.sleep(0.2)
    process.kill()
    sys.exit("xtune serve was not ready in 600 s")


def one_request(client, name: str, max_tokens: int, index: int) -> dict:
    started = time.perf_counter()
    first = None
    usage = None
    stream = client.chat.completions.create(
        model=name,
        messages=[{"role": "user", "content": f"Request {index}: tell me about yourself."}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - started
        if chunk.usage:
            usage = chunk.usage
    return {"latency": time.perf_counter() - started, "ttft": first, "tokens": usage.completion_tokens}


def run_level(client, name: str, clients: int, requests: int, max_tokens: int) -> dict:
    """``clients`` threads, ``requests`` streamed requests each; rates over the level's wall clock."""
    results: list[dict] = []
    errors: list[str] = []
    lock = threading.Lock()

    def worker(slot: int) -> None:
        for r in range(requests):
            try:
                outcome = one_request(client, name, max_tokens, slot * requests + r)
            except Exception as exc:  # a failed request is reported in the row, not hidden
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")
                continue
            with lock:
                results.append(outcome)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(slot,)) for slot in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    tokens = sum(result["tokens"] for result in results)
    ttfts = [result["ttft"] for result in results if result["ttft"] is not None]
    return {
        "clients": clients,
        "requests": len(results),
        "errors": errors,
        "seconds": round(wall, 3),
        "requests_per_s": round(len(results) / wall, 3),
        "output_tokens": tokens,
        "output_tokens_per_s": round(tokens / wall, 1),
        "mean_latency_s": round(statistics.mean(r["latency"] for r in results), 3) if results else None,
        "median_ttft_s": round(statistics.median(ttfts), 3) if ttfts else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(REPO / "data" / "models" / "tiny_llama"))
    parser.add_argument("--adapter")
    parser.add_argument("--url", help="benchmark this running server instead of starting one")
    parser.add_argument("--name", default="bench", help="the served model name")
    parser.add_argument("--api-key", default=os.environ.get("XTUNE_API_KEY", "unused"))
    parser.add_argument("--clients", default="1,4,16", help="concurrent client counts")
    parser.add_argument("--requests", type=int, default=4, help="requests per client per level")
    parser.add_argument("--max-tokens", type=int, default=64, help="output tokens per request")
    parser.add_argument("--max-concurrency", type=int, default=4, help="the started server's --max-concurrency")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--out", help="write the rows as JSON here")
    args = parser.parse_args(argv)

    import openai

    process = None
    url = args.url
    with tempfile.TemporaryDirectory() as logs:
        if url is None:
            process, url = start_server(args, Path(logs))
        try:
            client = openai.OpenAI(base_url=url, api_key=args.api_key, max_retries=0, timeout=600)
            run_level(client, args.name, 1, 1, args.max_tokens)  # warm-up
            rows = [
                run_level(client, args.name, int(c), args.requests, args.max_tokens) for c in args.clients.split(",")
            ]
        finally:
            if process is not None:
                process.terminate()
                process.wait(timeout=120)
    print(f"| clients | requests | req/s | output tok/s | mean latency s | median TTFT s |  (server: {url})")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['clients']} | {row['requests']} | {row['requests_per_s']} | {row['output_tokens_per_s']} | "
            f"{row['mean_latency_s']} | {row['median_ttft_s']} |"
        )
    report = {"settings": {k: v for k, v in vars(args).items() if k != "api_key"}, "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    return 1 if any(row["errors"] for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
