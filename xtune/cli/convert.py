"""``xtune convert pth_to_hf`` and ``xtune convert merge``."""

import argparse

from xtune.cli.configs import add_cfg_options
from xtune.hf.dtypes import DTYPE_NAMES

PTH_TO_HF_EXAMPLE = (
    "Example: xtune convert pth_to_hf work_dirs/demo/tiny_llama_lora_identity_e3.py "
    "work_dirs/demo/iter_500.pth hf_adapter"
)
MERGE_EXAMPLE = "Example: xtune convert merge data/models/tiny_llama hf_adapter merged --verify"


def add_parser(sub, name: str, text: str) -> None:
    p = sub.add_parser(name, help=text, description=f"{text}.")
    p.set_defaults(func=_usage(p))
    actions = p.add_subparsers(dest="conversion", metavar="CONVERSION")

    q = actions.add_parser(
        "pth_to_hf",
        help="a training checkpoint to a PEFT adapter (LoRA) or a full model folder",
        description="Turn a training checkpoint into a Hugging Face folder: a PEFT adapter for lora, dora "
        "and qlora runs, a complete model for full and freeze runs, with the training tokenizer and chat "
        f"template. {PTH_TO_HF_EXAMPLE}",
    )
    q.add_argument("config", help="the training config (name or path), or the resolved copy in the work dir")
    q.add_argument("checkpoint", help="a checkpoint from the work dir, e.g. iter_500.pth")
    q.add_argument("save_dir", help="the folder to create")
    add_cfg_options(q)
    q.add_argument(
        "--dtype",
        choices=DTYPE_NAMES,
        default="auto",
        help="weights dtype (default auto: the dtype the run trained in)",
    )
    q.add_argument("--max-shard-size", default="5GB", help="largest weight file of a full model (default 5GB)")
    q.add_argument(
        "--no-safe-serialization",
        dest="safe_serialization",
        action="store_false",
        help="write PyTorch .bin files instead of safetensors",
    )
    q.add_argument("--overwrite", action="store_true", help="replace SAVE_DIR if it exists")
    q.set_defaults(func=pth_to_hf)

    m = actions.add_parser(
        "merge",
        help="merge a PEFT adapter into its base model",
        description=f"Merge a PEFT adapter into its base model and save a standalone model. {MERGE_EXAMPLE}",
    )
    m.add_argument("base", help="the base model folder or hub name the adapter was trained on")
    m.add_argument("adapter", help="the adapter folder (from xtune convert pth_to_hf)")
    m.add_argument("save_dir", help="the folder to create")
    m.add_argument("--device", default="cpu", help="cpu (default, needs no GPU memory), cuda or auto")
    m.add_argument(
        "--dtype",
        choices=DTYPE_NAMES,
        default="auto",
        help="weights dtype (default auto: the base model's own)",
    )
    m.add_argument("--max-shard-size", default="5GB", help="largest weight file (default 5GB)")
    m.add_argument(
        "--verify",
        action="store_true",
        help="check base + adapter and the merged model agree on a random batch; fail if not",
    )
    m.add_argument("--overwrite", action="store_true", help="replace SAVE_DIR if it exists")
    m.set_defaults(func=merge)


def _usage(parser: argparse.ArgumentParser):
    def show(args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    return show


def pth_to_hf(args: argparse.Namespace) -> int:
    from xtune.config import parse_cfg_options
    from xtune.convert.pth_to_hf import pth_to_hf as convert

    convert(
        args.config,
        args.checkpoint,
        args.save_dir,
        cfg_options=parse_cfg_options(args.cfg_options),
        dtype=args.dtype,
        max_shard_size=args.max_shard_size,
        safe_serialization=args.safe_serialization,
        overwrite=args.overwrite,
    )
    print(args.save_dir)
    return 0


def merge(args: argparse.Namespace) -> int:
    from xtune.config.loader import resolve_model_path
    from xtune.convert.merge import merge_adapter

    result = merge_adapter(
        resolve_model_path(args.base),  # a shipped demo model's short name, as in configs
        args.adapter,
        args.save_dir,
        device=args.device,
        dtype=args.dtype,
        max_shard_size=args.max_shard_size,
        verify=args.verify,
        overwrite=args.overwrite,
    )
    if result.max_logit_diff is not None:
        print(f"verify: max logit diff {result.max_logit_diff:.3g} (tolerance {result.tolerance:.3g})")
    print(args.save_dir)
    return 0
