"""Find, load, override and resolve xtune configs.

A config is given by path or by name (the file stem, looked up under ``configs/``). Overrides come as
``KEY=VALUE`` strings: a top-level knob (``lr=1e-5``) or a nested key
(``optim_wrapper.optimizer.betas=(0.9,0.95)``). Values parse as Python literals. After overriding,
``${knob}`` references are resolved (see :mod:`xtune.config.interpolate`).
"""

import ast
import difflib
from pathlib import Path
from typing import Any

from mmengine.config import Config

from xtune.config.interpolate import resolve
from xtune.errors import ConfigError
from xtune.paths import CONFIG_DIR, MODEL_DIR


def list_configs(pattern: str | None = None) -> list[Path]:
    """Shipped configs (leaf files outside ``_base_``), sorted by name, filtered by a substring."""
    paths = [p for p in CONFIG_DIR.rglob("*.py") if "_base_" not in p.parts and not p.name.startswith("_")]
    if pattern:
        paths = [p for p in paths if pattern.lower() in p.stem.lower()]
    return sorted(paths, key=lambda p: p.stem)


def find_config(name_or_path: str | Path) -> Path:
    """Return the config file for a path or a shipped config name.

    Raises:
        ConfigError: The path does not exist, or no (or more than one) shipped config has that name.
    """
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_file():
        return path.resolve()
    looks_like_path = text.endswith(".py") or "/" in text or "\\" in text
    stem = Path(text).stem if text.endswith(".py") else text
    matches = [p for p in list_configs() if p.stem == stem]
    if len(matches) == 1 and not (looks_like_path and "/" in text):
        return matches[0]
    if len(matches) > 1:
        listing = ", ".join(str(m) for m in matches)
        raise ConfigError(f"config name '{text}' is ambiguous: {listing}. Pass one of them by path.")
    if looks_like_path:
        raise ConfigError(f"config file not found: {text}. Check the path, or run `xtune list-cfg`.")
    names = [p.stem for p in list_configs()]
    close = difflib.get_close_matches(stem, names, n=5, cutoff=0.4)
    hint = f" Closest names: {', '.join(close)}." if close else ""
    raise ConfigError(f"no config named '{text}' under {CONFIG_DIR}.{hint} List them with `xtune list-cfg`.")


def parse_value(text: str) -> Any:
    """Parse an override value as a Python literal (``1e-5``, ``None``, ``[]``); else keep the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_cfg_options(items: list[str] | None) -> dict[str, Any]:
    """Turn ``["lr=1e-5", "model.lora.r=8"]`` into ``{"lr": 1e-05, "model.lora.r": 8}``.

    Raises:
        ConfigError: An item has no ``=``.
    """
    options: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--cfg-options expects KEY=VALUE, got '{item}'. Example: --cfg-options lr=1e-5")
        options[key.strip()] = parse_value(value.strip())
    return options


def _check_option_keys(cfg: Config, options: dict[str, Any]) -> None:
    problems = []
    for key in options:
        top = key.split(".")[0]
        if top not in cfg:
            close = difflib.get_close_matches(top, list(cfg.keys()), n=3, cutoff=0.5)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            problems.append(f"'{key}': the config has no top-level key '{top}'{hint}")
    if problems:
        raise ConfigError(
            "unknown --cfg-options keys: " + "; ".join(problems) + ". See the keys with `xtune print-config CONFIG`."
        )


def resolve_model_path(value: Any) -> Any:
    """A shipped demo model's name (``tiny_llama``) becomes its absolute path; anything else is kept."""
    if isinstance(value, str) and value and not Path(value).exists() and (MODEL_DIR / value).is_dir():
        return str((MODEL_DIR / value).resolve())
    return value


def load_config(name_or_path: str | Path, cfg_options: dict[str, Any] | None = None, resolved: bool = True) -> Config:
    """Load a config, apply overrides and (by default) resolve knob references.

    Args:
        name_or_path: A config path or a shipped config name.
        cfg_options: Overrides, as returned by :func:`parse_cfg_options`.
        resolved: Resolve ``${knob}`` references. ``False`` keeps them (for ``copy-cfg``).

    Raises:
        ConfigError: The config cannot be found, parsed or overridden.
    """
    path = find_config(name_or_path)
    try:
        cfg = Config.fromfile(str(path))
    except (SyntaxError, NameError, KeyError, ValueError, TypeError, OSError, ImportError) as exc:
        raise ConfigError(f"cannot read config {path}: {type(exc).__name__}: {exc}") from None
    options = dict(cfg_options or {})
    if "evaluation_inputs" in options and "evaluation_inputs_for" in cfg and "evaluation_inputs_for" not in options:
        # Prompts given on the command line are the user's own: asked whatever the data.
        options["evaluation_inputs_for"] = None
    _check_option_keys(cfg, options)
    if options:
        cfg.merge_from_dict(options, allow_list_keys=True)
    if not resolved:
        return cfg
    raw = cfg.to_dict()
    if "pretrained_model_name_or_path" in raw:
        raw["pretrained_model_name_or_path"] = resolve_model_path(raw["pretrained_model_name_or_path"])
    result = {key: resolve(value, raw, where=key) for key, value in raw.items()}
    return Config(result, filename=str(path))
