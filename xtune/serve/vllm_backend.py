"""``--backend vllm``: the same model, adapter and chat template, served by vLLM's own OpenAI server.

vLLM batches requests continuously on the GPU; xtune only translates its options. The chat template is
passed explicitly, so prompts render as in training: a ``--template NAME`` is written to a file for
vLLM, an adapter's saved ``chat_template.jinja`` is used as is. An adapter becomes a LoRA module served
under ``--served-model-name``. A training checkpoint must be converted first (vLLM reads Hugging Face
folders). Not run in xtune's tests: CI has no GPU and no vLLM; the options it builds are checked.
"""

import argparse
import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from xtune.errors import XtuneError
from xtune.hf.dtypes import LONG_NAMES

INSTALL_HINT = (
    "--backend vllm needs vLLM, which is not installed: pip install vllm (Linux, CUDA GPU), or use --backend hf."
)


def check_vllm_args(args: argparse.Namespace) -> None:
    """Refuse what vLLM cannot serve, before anything is started.

    Raises:
        XtuneError: vLLM is missing, or a training checkpoint / quantization was asked for.
    """
    if importlib.util.find_spec("vllm") is None:
        raise XtuneError(INSTALL_HINT)
    if args.config:
        raise XtuneError(
            "--backend vllm serves Hugging Face folders: convert the checkpoint first "
            "(xtune convert pth_to_hf CONFIG CHECKPOINT OUT) and serve MODEL --adapter OUT."
        )
    if args.bits:
        raise XtuneError("--bits applies to --backend hf; vLLM takes a pre-quantized model instead.")
    if len(getattr(args, "allowed_local_media_path", None) or []) > 1:
        raise XtuneError("--backend vllm takes one --allowed-local-media-path folder.")


def vllm_command(args: argparse.Namespace, model_name: str, chat_template_file: str | None) -> list[str]:
    """The command line of vLLM's OpenAI server for xtune serve's options."""
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", args.model]
    command += ["--host", args.host, "--port", str(args.port), "--dtype", LONG_NAMES.get(args.dtype, args.dtype)]
    command += ["--max-num-seqs", str(args.max_concurrency)]
    if args.adapter:
        # Requests name the adapter; the base model stays reachable under its path.
        command += ["--enable-lora", "--lora-modules", f"{model_name}={args.adapter}"]
    else:
        command += ["--served-model-name", model_name]
    if chat_template_file:
        command += ["--chat-template", chat_template_file]
    if args.trust_remote_code:
        command.append("--trust-remote-code")
    if getattr(args, "allowed_local_media_path", None):
        # vLLM reads local image files only under one folder it is given
        command += ["--allowed-local-media-path", args.allowed_local_media_path[0]]
    return command


def serve_with_vllm(args: argparse.Namespace, model_name: str, api_key: str | None) -> int:
    """Run vLLM's server in the foreground; its exit status is ours."""
    check_vllm_args(args)
    template_file = None
    if args.template != "auto":
        from xtune.dataset.templates import get_template

        handle = tempfile.NamedTemporaryFile("w", suffix=".jinja", delete=False)
        handle.write(get_template(args.template).jinja)
        handle.close()
        template_file = handle.name
    elif args.adapter and (Path(args.adapter) / "chat_template.jinja").is_file():
        # vLLM renders with the base model's tokenizer; xtune convert saved the training template here.
        template_file = str(Path(args.adapter) / "chat_template.jinja")
    env = dict(os.environ)
    if api_key:
        env["VLLM_API_KEY"] = api_key  # not on the command line, where `ps` shows it
    child = subprocess.Popen(vllm_command(args, model_name, template_file), env=env)
    for sig in (signal.SIGINT, signal.SIGTERM):  # vLLM shuts itself down on the signal we get
        signal.signal(sig, lambda number, frame: child.send_signal(number))
    try:
        return child.wait()
    finally:
        if template_file and args.template != "auto":
            os.unlink(template_file)
