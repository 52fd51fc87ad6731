"""``xtune check-dataset``: build a config's training data, report on it, show or dump the rows.

Stage datasets (preference pairs, KTO rows) show items with their own ``describe`` and dump ``record``s:
``chosen_input_ids``/``chosen_labels``/``rejected_input_ids``/``rejected_labels`` per pair, or
``input_ids``/``labels``/``kto_label`` per KTO row. Image-text rows (``VisionSFTDataset``) show their image
files and their image tokens as ``<image xN>``, and dump their image paths instead of pixels."""

import argparse
import json
import os
from pathlib import Path

from xtune.cli.configs import add_cfg_options
from xtune.config import load_config, parse_cfg_options
from xtune.errors import ConfigError

SHOW = ("text", "masked_text", "input_ids", "labels")


def add_parser(sub, name: str, text: str) -> None:
    p = sub.add_parser(
        name,
        help=text,
        description=f"{text}.\n\nExample: xtune check-dataset "
        "tiny_llama_lora_identity_e3 --num 2 --show masked_text --dump rows.jsonl",
    )
    p.add_argument("config", help="config name or path")
    add_cfg_options(p)
    p.add_argument("--num", type=int, default=1, help="how many processed rows to show (default 1)")
    p.add_argument(
        "--show",
        choices=SHOW,
        default="masked_text",
        help="how to show rows: text, masked_text (untrained parts marked), input_ids, labels",
    )
    p.add_argument("--dump", metavar="FILE.jsonl", help="write every processed row as one JSON object per line")
    p.set_defaults(func=check_dataset)


def check_dataset(args: argparse.Namespace) -> int:
    import xtune.dataset  # noqa: F401  (registers the datasets)
    from xtune.dataset.encode import masked_text
    from xtune.registry import DATASETS

    cfg = load_config(args.config, parse_cfg_options(args.cfg_options))
    dataset_cfg = cfg.get("train_dataset") or cfg.train_dataloader.get("dataset")
    if dataset_cfg is None:
        raise ConfigError(f"{args.config} has no train_dataset or train_dataloader.dataset to check.")
    dataset = DATASETS.build(dataset_cfg)
    print(json.dumps(dataset.statistics(), ensure_ascii=False, indent=2))
    tokenizer = dataset.tokenizer
    for index in range(min(args.num, len(dataset))):
        if hasattr(dataset, "describe"):  # a stage's dataset (pairs, labelled completions) shows itself
            print(f"--- item {index}")
            print(dataset.describe(index))
            continue
        row = dataset.record(index) if hasattr(dataset, "record") else dataset[index]
        print(f"--- row {index} ({len(row['input_ids'])} tokens)")
        if args.show == "text":
            text = tokenizer.decode(row["input_ids"])
        elif args.show == "masked_text":
            text = masked_text(tokenizer, row["input_ids"], row["labels"])
        else:
            text = str(row[args.show])
        if hasattr(dataset, "shown"):  # image-text rows: their images, and image tokens as <image xN>
            text = dataset.shown(index, text)
        print(text)
    if args.dump:
        _dump(dataset, Path(args.dump))
        print(f"wrote {len(dataset)} rows to {args.dump}")
    return 0


def _dump(dataset, path: Path) -> None:
    """Write rows through a temporary file, so a failure leaves no half-written dump."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as handle:
        for index in range(len(dataset)):
            record = dataset.record(index) if hasattr(dataset, "record") else dataset[index]
            handle.write(json.dumps(record) + "\n")
    os.replace(tmp, path)
