"""``xtune chat``: talk to a model, a model plus adapter, or a training checkpoint."""

import argparse
import sys

from xtune.cli.configs import add_cfg_options
from xtune.errors import XtuneError
from xtune.hf.dtypes import DTYPE_NAMES

EXAMPLES = (
    "Examples: xtune chat merged_dir --prompt 'Who are you?' --temperature 0 | "
    "xtune chat data/models/tiny_llama --adapter hf_adapter | "
    "xtune chat llava_dir --image cat.png --prompt 'What is in the picture?' | "
    "xtune chat --config work_dirs/demo/tiny_llama_lora_identity_e3.py "
    "--checkpoint work_dirs/demo/iter_500.pth"
)
HELP_LINE = "Type a message; /reset clears the conversation, /exit or Ctrl-D leaves."
IMAGE_HELP_LINE = "/image PATH adds an image to your next message (where it writes <image>, else before it)."


def add_model_arguments(p: argparse.ArgumentParser, verb: str) -> None:
    """What to load, shared by ``xtune chat`` and ``xtune serve``: MODEL [--adapter], or --config with
    --checkpoint; --template, --bits, --device, --dtype, --trust-remote-code. ``verb`` fills the help."""
    p.add_argument("model", nargs="?", help="a Hugging Face model folder or hub name (not with --config)")
    p.add_argument("--adapter", help="a PEFT adapter folder to put on MODEL")
    p.add_argument("--config", help=f"a training config: {verb} with --checkpoint without converting it")
    p.add_argument("--checkpoint", help="a training checkpoint (with --config)")
    add_cfg_options(p)
    p.add_argument(
        "--template",
        default="auto",
        help="chat template: a built-in name, or auto (default: the tokenizer's own, which "
        "xtune convert sets to the training template); --config uses the config's",
    )
    p.add_argument("--bits", type=int, choices=[4, 8], help="load MODEL quantized (needs CUDA and bitsandbytes)")
    p.add_argument("--device", default="auto", help="auto (default: cuda if present), cpu or cuda")
    p.add_argument(
        "--dtype",
        choices=DTYPE_NAMES,
        default="auto",
        help="auto = bf16 on a GPU that has it, fp32 on the CPU",
    )
    p.add_argument("--trust-remote-code", action="store_true", help="run MODEL's own modelling code")


def add_parser(sub, name: str, text: str) -> None:
    p = sub.add_parser(name, help=text, description=f"{text}. {EXAMPLES}")
    add_model_arguments(p, "chat")
    p.add_argument("--system", help="system prompt")
    p.add_argument(
        "--prompt",
        action="extend",
        nargs="+",
        default=[],
        metavar="TEXT",
        help="answer this prompt (each in a new conversation), print the answer and exit; repeatable",
    )
    p.add_argument(
        "--image",
        action="append",
        default=[],
        metavar="PATH",
        help="an image for a vision-language model; repeatable. The images go where the prompt writes "
        "<image> (one marker per image), else before its text; each --prompt gets them. Without --prompt "
        "they go with the first message",
    )
    p.add_argument("--max-new-tokens", type=int, default=512, help="longest answer in tokens (default 512)")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature; 0 = greedy (default 0.7)")
    p.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling mass (default 0.9)")
    p.add_argument("--top-k", type=int, default=50, help="sample among the K likeliest tokens (default 50)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="above 1 discourages repeats")
    p.add_argument(
        "--stop-words",
        nargs="+",
        default=[],
        metavar="WORD",
        help="extra strings that end an answer (the template's are always used)",
    )
    p.set_defaults(func=chat)


def check_model_arguments(args: argparse.Namespace, command: str, examples: str) -> None:
    """MODEL or --config with --checkpoint, never both (see :func:`add_model_arguments`).

    Raises:
        XtuneError: The combination cannot be loaded; the message says which form to use.
    """
    if args.config or args.checkpoint:
        if not (args.config and args.checkpoint):
            raise XtuneError(f"--config and --checkpoint go together: xtune {command} --config CFG --checkpoint PTH")
        if args.model or args.adapter or args.bits:
            raise XtuneError("pass either MODEL (with --adapter/--bits) or --config with --checkpoint, not both.")
        if args.template != "auto":
            raise XtuneError("--template does not apply with --config: the config's prompt_template is used.")
    elif not args.model:
        raise XtuneError(f"pass a MODEL folder, or --config CFG --checkpoint PTH. {examples}")
    elif args.cfg_options:
        raise XtuneError("--cfg-options applies only with --config.")


def load_model_from_arguments(args: argparse.Namespace):
    """The :class:`xtune.chat.loading.ChatModel` that :func:`add_model_arguments`' options name."""
    from xtune.chat.loading import load_checkpoint_for_chat, load_model_for_chat
    from xtune.config import parse_cfg_options
    from xtune.config.loader import resolve_model_path
    from xtune.stages.rm import refuse_reward_model

    refuse_reward_model(args.model, args.adapter, getattr(args, "config", None))

    if args.config:
        return load_checkpoint_for_chat(
            args.config,
            args.checkpoint,
            parse_cfg_options(args.cfg_options),
            device=args.device,
            dtype=args.dtype,
        )
    return load_model_for_chat(
        resolve_model_path(args.model),  # a shipped demo model's short name, as in configs
        adapter=args.adapter,
        template=args.template,
        bits=args.bits,
        device=args.device,
        dtype=args.dtype,
        trust_remote_code=args.trust_remote_code,
    )


def chat(args: argparse.Namespace) -> int:
    check_model_arguments(args, "chat", EXAMPLES)
    if args.max_new_tokens < 1:
        raise XtuneError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}.")
    from xtune.chat.images import open_image
    from xtune.chat.session import ChatSession, GenerationSettings
    from xtune.chat.stopping import template_stop_words

    images = [open_image(path) for path in args.image]  # a bad image fails before the model loads
    loaded = load_model_from_arguments(args)
    if images and not loaded.reads_images:
        raise XtuneError(
            f"--image: {args.model or args.config} is a text-only model; images need a vision-language model "
            "(e.g. a llava or qwen2_5_vl folder, or a converted LLaVA run)."
        )
    settings = GenerationSettings(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        repetition_penalty=args.repetition_penalty,
    )
    stop_words = template_stop_words(loaded.tokenizer, loaded.template, args.stop_words)
    session = ChatSession(
        loaded.model, loaded.tokenizer, stop_words, system=args.system, settings=settings, processor=loaded.processor
    )
    if args.prompt:
        for prompt in args.prompt:
            session.reset()
            print(session.ask(prompt, images=images), flush=True)
        return 0
    return interact(session, images=images)


def interact(session, read=None, images: list | None = None) -> int:
    """The interactive loop: stream each answer; ``/reset``, ``/image``, ``/exit`` and Ctrl-D as documented.

    ``read`` asks for the next line (default: :func:`input`); ``images`` go with the first message. A
    message that cannot be asked (a bad image, markers that do not match the images) is reported and the
    conversation goes on.
    """
    from xtune.chat.images import open_image

    read = read or input
    pending = list(images or [])
    reads_images = session.generator.processor is not None
    print(HELP_LINE, file=sys.stderr)
    if reads_images:
        print(IMAGE_HELP_LINE, file=sys.stderr)
    while True:
        try:
            text = read(">>> ")
        except EOFError:
            print(file=sys.stderr)
            return 0
        command = text.strip()
        if command == "/exit":
            return 0
        if command == "/reset":
            session.reset()
            pending = []
            print("(conversation cleared)", file=sys.stderr)
            continue
        if command == "/image" or command.startswith("/image "):
            pending += _read_image(command[len("/image") :].strip(), reads_images, open_image)
            continue
        if not command:
            continue
        try:
            session.ask(text, stream=sys.stdout, images=pending)
        except XtuneError as exc:
            print(f"xtune: error: {exc}", file=sys.stderr)
            continue
        pending = []


def _read_image(path: str, reads_images: bool, open_image) -> list:
    """The image ``/image PATH`` names, or nothing (the problem printed) when it cannot be used."""
    if not reads_images:
        print("xtune: error: /image: this model reads text only.", file=sys.stderr)
    elif not path:
        print("xtune: error: /image needs a path: /image PATH", file=sys.stderr)
    else:
        try:
            image = open_image(path)
        except XtuneError as exc:
            print(f"xtune: error: {exc}", file=sys.stderr)
        else:
            print(f"(image {path} added to your next message)", file=sys.stderr)
            return [image]
    return []
