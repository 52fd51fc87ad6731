"""``xtune list-cfg``, ``xtune copy-cfg`` and ``xtune print-config``."""

import argparse
from pathlib import Path

from xtune.config import find_config, list_configs, load_config, parse_cfg_options
from xtune.errors import ConfigError
from xtune.paths import CONFIG_DIR


def add_cfg_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cfg-options",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override top-level knobs or nested keys, e.g. lr=1e-5 model.lora.r=8",
    )


def add_parser(sub, name: str, text: str) -> None:
    if name == "list-cfg":
        p = sub.add_parser(name, help=text, description=f"{text}.\n\nExample: xtune list-cfg -p tiny")
        p.add_argument("-p", "--pattern", help="show only names containing this text")
        p.set_defaults(func=list_cfg)
    elif name == "copy-cfg":
        p = sub.add_parser(
            name, help=text, description=f"{text}.\n\nExample: xtune copy-cfg tiny_llama_lora_identity_e3 my_configs/"
        )
        p.add_argument("name", help="config name (see xtune list-cfg) or path")
        p.add_argument("dir", help="folder to write NAME_copy.py into")
        p.set_defaults(func=copy_cfg)
    else:
        p = sub.add_parser(
            name,
            help=text,
            description=f"{text}.\n\nExample: xtune print-config tiny_llama_lora_identity_e3 --cfg-options lr=1e-5",
        )
        p.add_argument("config", help="config name or path")
        add_cfg_options(p)
        p.set_defaults(func=print_config)


def list_cfg(args: argparse.Namespace) -> int:
    paths = list_configs(args.pattern)
    for path in paths:
        print(path.stem)
    if not paths:
        print(f"no config under {CONFIG_DIR} matches '{args.pattern}'")
        return 1
    return 0


def copy_cfg(args: argparse.Namespace) -> int:
    """Write the config with its bases folded in, knob references kept, so the copy stands alone."""
    source = find_config(args.name)
    cfg = load_config(source, resolved=False)
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{source.stem}_copy.py"
    if target.exists():
        raise ConfigError(f"{target} exists already; remove it or copy into another folder.")
    header = f"# Copied from {source.name} by `xtune copy-cfg`; every base config is folded in.\n"
    target.write_text(header + cfg.pretty_text)
    print(f"copied {source.stem} to {target}")
    return 0


def print_config(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, parse_cfg_options(args.cfg_options))
    print(cfg.pretty_text)
    return 0
