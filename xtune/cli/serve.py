"""``xtune serve``: an OpenAI-compatible API over a model, a model plus adapter, or a training checkpoint."""

import argparse
import ipaddress
import json
import os
import socket
import sys
from pathlib import Path

from xtune.cli.chat import add_model_arguments, check_model_arguments, load_model_from_arguments
from xtune.errors import XtuneError

EXAMPLES = (
    "Examples: xtune serve merged_dir | xtune serve data/models/tiny_llama --adapter hf_adapter --port 8001 | "
    "XTUNE_API_KEY=secret xtune serve merged_dir --host 0.0.0.0 (then point Open WebUI at http://HOST:8000/v1)"
)


def add_parser(sub, name: str, text: str) -> None:
    p = sub.add_parser(name, help=text, description=f"{text}. {EXAMPLES}")
    add_model_arguments(p, "serve")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument(
        "--api-key",
        default=os.environ.get("XTUNE_API_KEY") or None,
        help="require 'Authorization: Bearer KEY' on /v1 (default: $XTUNE_API_KEY; needed with a non-local --host)",
    )
    p.add_argument(
        "--served-model-name", help="the model id clients send (default: the adapter's or model's folder name)"
    )
    p.add_argument("--backend", choices=["hf", "vllm"], default="hf", help="hf (default: transformers) or vllm")
    p.add_argument("--max-concurrency", type=int, default=4, help="generations running at once (default 4)")
    p.add_argument(
        "--max-new-tokens", type=int, default=2048, help="most tokens one request may generate (default 2048)"
    )
    p.add_argument(
        "--allowed-local-media-path",
        action="append",
        metavar="DIR",
        help="a vision-language model reads image files that requests name (file paths, file:// URLs) only "
        "under DIR; repeatable (default: any file on a loopback --host, none on a wider one)",
    )
    p.set_defaults(func=serve)


def _check_args(args: argparse.Namespace) -> None:
    check_model_arguments(args, "serve", EXAMPLES)
    if args.max_concurrency < 1:
        raise XtuneError(f"--max-concurrency must be at least 1, got {args.max_concurrency}.")
    if args.max_new_tokens < 1:
        raise XtuneError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}.")
    for folder in args.allowed_local_media_path or []:
        if not Path(folder).expanduser().is_dir():
            raise XtuneError(f"--allowed-local-media-path {folder}: no such folder.")
    if not 0 <= args.port <= 65535:
        raise XtuneError(f"--port must be 0-65535, got {args.port}.")
    if not _is_loopback(args.host) and not args.api_key:
        raise XtuneError(
            f"--host {args.host} lets other machines reach the model: also pass --api-key KEY (or set "
            "XTUNE_API_KEY) so that only clients with the key can use it."
        )
    if args.backend == "hf":
        _check_hf_dependencies()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_hf_dependencies() -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise XtuneError(
            f"xtune serve needs FastAPI and uvicorn ({exc.name} is missing): pip install 'xtune[serve]'"
        ) from None


def model_name(args: argparse.Namespace) -> str:
    """``--served-model-name``, else the adapter's, config's or model's folder name."""
    if args.served_model_name:
        return args.served_model_name
    source = args.adapter or args.config or args.model
    return Path(source.rstrip("/")).stem if args.config else Path(source.rstrip("/")).name or source


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise XtuneError(
            f"cannot listen on {host}:{port}: {exc.strerror}. Pick another --port (0: any free one)."
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _ready_message(host: str, port: int, name: str, api_key: str | None, concurrency: int) -> str:
    url_host = f"[{host}]" if ":" in host else host
    base = f"http://{url_host}:{port}/v1"
    auth = " -H 'Authorization: Bearer $XTUNE_API_KEY'" if api_key else ""
    body = json.dumps({"model": name, "messages": [{"role": "user", "content": "Hello"}]})
    return (
        f"xtune: serving '{name}' at {base} (hf backend, {concurrency} generations at once; Ctrl-C stops)\n"
        f"  curl {base}/chat/completions -H 'Content-Type: application/json'{auth} -d '{body}'"
    )


def local_media_roots(args: argparse.Namespace) -> list[str] | None:
    """Folders whose image files requests may name: ``--allowed-local-media-path``; else any file when
    only this machine can connect, none when others can (:class:`xtune.serve.media.LocalMedia`)."""
    if args.allowed_local_media_path:
        return list(args.allowed_local_media_path)
    return None if _is_loopback(args.host) else []


def serve(args: argparse.Namespace) -> int:
    _check_args(args)
    name = model_name(args)
    if args.backend == "vllm":
        from xtune.serve.vllm_backend import serve_with_vllm

        return serve_with_vllm(args, name, args.api_key)
    from xtune.serve.app import create_app
    from xtune.serve.engine import HFEngine
    from xtune.serve.media import LocalMedia
    from xtune.serve.server import run_server

    sock = _bind(args.host, args.port)  # before loading: a busy port fails in a second, not after a minute
    try:
        engine = HFEngine(load_model_from_arguments(args), max_concurrency=args.max_concurrency)
        media = LocalMedia(local_media_roots(args))
        app = create_app(engine, name, api_key=args.api_key, max_new_tokens=args.max_new_tokens, local_media=media)
        host, port = sock.getsockname()[:2]
        run_server(app, sock, engine, _ready_message(host, port, name, args.api_key, args.max_concurrency))
    finally:
        sock.close()
    print("xtune: server stopped", file=sys.stderr, flush=True)
    return 0
