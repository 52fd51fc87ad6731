"""The ``xtune`` command: one subcommand per module, one function each.

Every subcommand's exit status is xtune's exit status. User errors (:class:`xtune.errors.XtuneError`)
print one line, ``xtune: error: ...``, and exit 2; no traceback.
"""

import argparse
import os
import sys

from xtune.errors import XtuneError

# (name, module, one-line help). Modules are imported only when their command runs: `xtune --help`
# stays fast and a command never pays for another's imports.
COMMANDS = [
    ("train", "xtune.cli.train", "train a model from a config"),
    ("convert", "xtune.cli.convert", "convert checkpoints: pth_to_hf, merge"),
    ("chat", "xtune.cli.chat", "chat with a model, an adapter or a training checkpoint"),
    ("serve", "xtune.cli.serve", "serve a model over an OpenAI-compatible HTTP API"),
    ("list-cfg", "xtune.cli.configs", "list the shipped configs"),
    ("copy-cfg", "xtune.cli.configs", "copy a shipped config into a folder, ready to edit and train"),
    ("print-config", "xtune.cli.configs", "print a config fully resolved, with overrides applied"),
    ("check-dataset", "xtune.cli.check_dataset", "validate a config's data and show processed samples"),
    ("board", "xtune.cli.board", "a web page to fine-tune, watch, chat and export"),
]


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)  # keep "Example:" lines
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # argparse's usage errors: one line plus usage, exit 2
        self.print_usage(sys.stderr)
        self.exit(2, f"xtune: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = _Parser(
        prog="xtune",
        description="Fine-tune open LLMs from config files.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, module, text in COMMANDS:
        importlib.import_module(module).add_parser(sub, name, text)
    return parser


def _quiet_deepspeed_on_cpu() -> None:
    """Tell DeepSpeed (imported by mmengine's runner) that there is no GPU, instead of letting it guess
    and print a warning into every command's output."""
    if "DS_ACCELERATOR" not in os.environ:
        import torch

        if not torch.cuda.is_available():
            os.environ["DS_ACCELERATOR"] = "cpu"


def main(argv: list[str] | None = None) -> int:
    """Run ``xtune`` with ``argv``; returns (and, from the console script, exits with) the status."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv  # what was typed, for commands that start worker processes with the same arguments
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    _quiet_deepspeed_on_cpu()
    try:
        return int(args.func(args) or 0)
    except XtuneError as exc:
        print(f"xtune: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_status", 2)  # 2, or 128 + signal for a run stopped by a signal
    except KeyboardInterrupt:
        print("xtune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
