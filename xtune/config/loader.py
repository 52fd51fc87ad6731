"""Find, load, override and resolve xtune configs.

A config is given by path or by name (the file stem, looked up under ``configs/``). Overrides come as
``KEY=VALUE`` strings: a top-level knob (``lr=1e-5``) or a nested key
(``optim_wrapper.optimizer.betas=(0.9,0.95)``). Values parse as Python literals. After overriding,
``${knob}`` references are resolved (see :mod:`xtune.config.interpolate`).
"""

import difflib
import traceback
from pathlib import Path
from typing import Any

from mmengine.config import Config

from xtune.config.interpolate import resolve
from xtune.config.literal import NotALiteral, parse_literal
from xtune.config.preflight import training_problems
from xtune.config.validate import get_path, option_key_problems, value_problems
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


class UnparsedText(str):
    """An option value that is not a Python literal, kept as text (``data_path=my_data.json``).

    :func:`load_config` refuses it where the config holds a number, list or dict (``lr=1e-5e``).
    """


def parse_value(text: str) -> Any:
    """Parse an override value as a literal (``1e-5``, ``None``, ``[dict(type='LinearLR')]``); else keep the
    text, marked as :class:`UnparsedText`. Nothing is executed."""
    try:
        return parse_literal(text)
    except NotALiteral:
        return UnparsedText(text)


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


def _unparsed_problems(tree: dict, options: dict[str, Any]) -> list[str]:
    """Option values kept as text where the config holds a number, list or dict, or that look like one."""
    problems = []
    for key, value in options.items():
        if not isinstance(value, UnparsedText):
            continue
        found, current = get_path(tree, key)
        holds = found and isinstance(current, (int, float, list, tuple, dict)) and not isinstance(current, bool)
        if holds or value.lstrip().startswith(("[", "(", "{", "dict(")):
            what = f" (the config's {key} is {_describe(current)})" if holds else ""
            detail = ""
            try:
                parse_literal(value)
            except NotALiteral as exc:
                detail = f": {exc}"
            problems.append(f"--cfg-options {key}={value}: not a Python literal{detail}{what}")
    return problems


def _describe(value: Any) -> str:
    """A short description of a config value for messages: ``float 0.005``, ``a list of 2 items``."""
    if isinstance(value, (list, tuple, dict)):
        return f"a {type(value).__name__} of {len(value)} items"
    return f"{type(value).__name__} {value!r}"


def _read_config_file(path: Path) -> Config:
    """Run the config file (configs are Python, see README "Trust"); its errors become one line."""
    try:
        return Config.fromfile(str(path))
    except SyntaxError as exc:
        # mmengine parses without a file name ('<unknown>'): then it is this file (or one of its bases)
        source = exc.filename if exc.filename and not exc.filename.startswith("<") else path
        where = f"{source}, line {exc.lineno}"
        raise ConfigError(f"cannot read config {where}: SyntaxError: {exc.msg}. Fix that line.") from None
    except Exception as exc:  # noqa: BLE001  (the config's own code raised: any exception is the user's to fix)
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.endswith(".py")]
        ours = str(Path(__file__).resolve().parents[1])  # xtune's own frames (this loader) are not the config's
        inside = [
            f
            for f in frames
            if "mmengine" not in f.filename and "importlib" not in f.filename and not f.filename.startswith(ours)
        ]
        line = f", line {inside[-1].lineno} ({inside[-1].filename})" if inside else ""
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ConfigError(f"cannot read config {path}{line}: {type(exc).__name__}: {first}".rstrip(": ")) from None


def _train_by_iterations(cfg: Config, options: dict[str, Any]) -> None:
    """``train_cfg.max_iters=N`` alone trains N iterations: the epoch count the loop would also get is dropped."""
    if options.get("train_cfg.max_iters") is not None and "train_cfg.max_epochs" not in options:
        train_cfg = cfg.get("train_cfg")
        if isinstance(train_cfg, dict) and train_cfg.get("max_epochs") is not None:
            cfg.merge_from_dict({"train_cfg.max_epochs": None})


def _schedules_in_iterations(result: dict) -> None:
    """With ``train_cfg.max_iters``, epoch spans of the schedulers become the same fractions of those
    iterations (warmup_ratio of the run, then the decay to its end), as they are of ``max_epochs``."""
    train_cfg = result.get("train_cfg")
    epochs = result.get("max_epochs")
    if not isinstance(train_cfg, dict) or not isinstance(result.get("param_scheduler"), list):
        return
    iters = train_cfg.get("max_iters")
    if train_cfg.get("max_epochs") is not None or not isinstance(iters, int) or not isinstance(epochs, (int, float)):
        return
    if epochs <= 0:
        return
    converted = []
    for item in result["param_scheduler"]:
        if isinstance(item, dict) and item.get("by_epoch") and item.get("convert_to_iter_based"):
            item = {k: v for k, v in item.items() if k != "convert_to_iter_based"}
            begin = round(float(item.get("begin", 0)) / epochs * iters)
            end = round(float(item.get("end", epochs)) / epochs * iters)
            if end <= begin:
                continue  # a span shorter than one iteration (a short warmup of a short run)
            item.update(begin=begin, end=end, by_epoch=False)
        converted.append(item)
    result["param_scheduler"] = converted


def resolve_model_path(value: Any) -> Any:
    """A shipped demo model's name (``tiny_llama``, ``tiny_clip``) becomes its absolute path; anything else is kept."""
    if isinstance(value, str) and value and not Path(value).exists() and (MODEL_DIR / value).is_dir():
        return str((MODEL_DIR / value).resolve())
    return value


def load_config(
    name_or_path: str | Path, cfg_options: dict[str, Any] | None = None, resolved: bool = True, check: bool = True
) -> Config:
    """Load a config, apply overrides and (by default) resolve knob references and check the values.

    Args:
        name_or_path: A config path or a shipped config name.
        cfg_options: Overrides, as returned by :func:`parse_cfg_options`.
        resolved: Resolve ``${knob}`` references. ``False`` keeps them (for ``copy-cfg``).
        check: Check every knob's type and range (:mod:`xtune.config.validate`).

    Raises:
        ConfigError: The config cannot be found, run, parsed or overridden, or has bad values; every
            problem found is in the one message.
    """
    path = find_config(name_or_path)
    cfg = _read_config_file(path)
    options = dict(cfg_options or {})
    if "evaluation_inputs" in options and "evaluation_inputs_for" in cfg and "evaluation_inputs_for" not in options:
        # Prompts given on the command line are the user's own: asked whatever the data.
        options["evaluation_inputs_for"] = None
    tree = cfg.to_dict()
    problems = option_key_problems(tree, list(options)) + _unparsed_problems(tree, options)
    if problems:
        raise ConfigError(_report(path, problems))
    if options:
        cfg.merge_from_dict(
            {k: str(v) if isinstance(v, UnparsedText) else v for k, v in options.items()}, allow_list_keys=True
        )
        _train_by_iterations(cfg, options)
    if not resolved:
        return cfg
    raw = cfg.to_dict()
    if "pretrained_model_name_or_path" in raw:
        raw["pretrained_model_name_or_path"] = resolve_model_path(raw["pretrained_model_name_or_path"])
    if "vision_tower" in raw:
        raw["vision_tower"] = resolve_model_path(raw["vision_tower"])
    try:
        result = {key: resolve(value, raw, where=key) for key, value in raw.items()}
    except ConfigError as exc:
        early = value_problems(raw, None) if check else []
        if early:  # a bad knob often breaks a reference too: report both
            raise ConfigError(_report(path, [*early, str(exc).rstrip(".")])) from None
        raise
    _schedules_in_iterations(result)
    if check:
        problems = value_problems(raw, result)
        if problems:
            raise ConfigError(_report(path, problems))
    return Config(result, filename=str(path))


def check_training(cfg: Config, work_dir: str | None = None) -> None:
    """What a training run needs beyond valid values: a dtype this machine trains in, a model path that
    exists, a work dir that is a folder, ``load_from``/``--resume`` files that are checkpoints of this
    model (:func:`xtune.config.preflight.training_problems`). Called by ``xtune train`` before anything
    is loaded.

    Raises:
        ConfigError: Every problem found, in one message.
    """
    import torch

    cuda = torch.cuda.is_available()
    bf16 = cuda and torch.cuda.is_bf16_supported()
    problems = training_problems(cfg.to_dict(), work_dir or cfg.get("work_dir"), cuda, bf16)
    if problems:
        raise ConfigError(_report(Path(cfg.filename or "the config"), problems, fix=""))


def _report(path: Path, problems: list[str], fix: str = " in the config or with --cfg-options KEY=VALUE") -> str:
    """All problems in one line: ``CONFIG: 2 problems: (1) ...; (2) ...``."""
    if len(problems) == 1:
        return f"{path}: {problems[0]}." + (f" Fix it{fix}." if fix else "")
    listed = "; ".join(f"({i}) {p}" for i, p in enumerate(problems, 1))
    return f"{path}: {len(problems)} problems: {listed}." + (f" Fix them{fix}." if fix else "")
