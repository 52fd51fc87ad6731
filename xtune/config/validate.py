"""Check a config before any work starts, and report every problem at once.

Design. Loading a config (:func:`xtune.config.load_config`) runs three checks and raises one
:class:`~xtune.errors.ConfigError` listing everything found, so a user fixes a config in one round:

1. ``--cfg-options`` keys must name something: a top-level key, a key of a nested dict, a list index,
   or an argument the dict's registered ``type`` accepts (``train_cfg.max_iters``; the class is looked
   up only for a key the config does not already hold). Unknown keys come back with the closest names.
2. Values that did not parse as literals are refused when the key holds a number, list or dict
   (``lr=1e-5e``, ``param_scheduler=[dict(type=1``), instead of reaching the optimizer as a string.
3. Every knob of the README's table is checked for type and range (:data:`KNOBS`), and so are the
   structured fields built from knobs (:data:`FIELDS`) wherever a config or option sets one directly
   (a field that still refers to its knob, ``'${lr}'``, was checked through the knob).

``xtune train`` adds :func:`xtune.config.preflight.training_problems`: what depends on this machine
and the file system. All of it runs in about a second: no model, tokenizer or data is loaded.
"""

import difflib
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from xtune.hf.dtypes import DTYPE_NAMES

# Kept here, not imported, because importing the model and dataset packages takes seconds; a test
# checks both equal the sets their packages accept.
FINETUNE_TYPES = ("full", "freeze", "lora", "dora", "qlora")
DATA_FORMATS = ("alpaca", "sharegpt", "openai", "text", "preference")
KEEP_ALL = -1  # save_total_limit / max_keep_ckpts value that keeps every checkpoint


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Rule:
    """A check of one value and what it expects, in words."""

    check: Callable[[Any], bool]
    expected: str


def _ints(low: int, none_ok: bool = False, keep_all: bool = False) -> Rule:
    text = f"a whole number >= {low}"
    text += f" (or {KEEP_ALL} to keep all)" if keep_all else ""
    text += " or None" if none_ok else ""
    return Rule(
        lambda v: (none_ok and v is None) or (keep_all and v == KEEP_ALL) or (_is_int(v) and v >= low),
        text,
    )


POSITIVE = Rule(lambda v: _is_number(v) and v > 0, "a number > 0")
FRACTION = Rule(lambda v: _is_number(v) and 0 <= v <= 1, "a number from 0 to 1")
NON_NEGATIVE = Rule(lambda v: _is_number(v) and v >= 0, "a number >= 0")
BOOL = Rule(lambda v: isinstance(v, bool), "True or False")
TEXT = Rule(lambda v: isinstance(v, str) and bool(v.strip()), "a non-empty string")


def _text_or_none(expected: str) -> Rule:
    return Rule(lambda v: v is None or TEXT.check(v), expected)


DTYPE = Rule(lambda v: v in DTYPE_NAMES, f"one of {', '.join(DTYPE_NAMES)}")
BETAS = Rule(
    lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_number(b) and 0 <= b < 1 for b in v),
    "two numbers in [0, 1), e.g. (0.9, 0.999)",
)

# The README's knob table (and the other top-level knobs shipped configs define). Checked when present.
KNOBS: dict[str, Rule] = {
    "pretrained_model_name_or_path": Rule(
        lambda v: isinstance(v, str) and bool(v.strip()), "a model directory or Hugging Face hub name"
    ),
    "data_path": Rule(
        lambda v: (
            (isinstance(v, str) and bool(v.strip()))
            or (isinstance(v, (list, tuple)) and bool(v) and all(isinstance(x, (str, dict)) for x in v))
        ),
        "a data file, folder, registered name or hub name",
    ),
    "data_format": Rule(lambda v: v is None or v in DATA_FORMATS, f"None or one of {', '.join(DATA_FORMATS)}"),
    "prompt_template": TEXT,
    "max_length": _ints(2),
    "pack_to_max_length": BOOL,
    "batch_size": _ints(1),
    "accumulative_counts": _ints(1),
    "lr": POSITIVE,
    "max_epochs": _ints(1, none_ok=True),  # None only with train_cfg.max_iters (checked below)
    "warmup_ratio": FRACTION,
    "save_steps": _ints(1),
    "save_total_limit": _ints(1, keep_all=True),
    "dtype": DTYPE,
    "gradient_checkpointing": Rule(lambda v: isinstance(v, bool) or v == "auto", "True, False or 'auto'"),
    "loss_chunk_size": _ints(0),
    "compile_layers": BOOL,
    "sequence_parallel_size": _ints(1),
    "activation_offload": BOOL,
    "tiled_mlp": _ints(0),
    "vision_tower": _text_or_none("None or a CLIP/SigLIP folder or hub name"),
    "projector": _text_or_none("None or the pretrain stage's work dir, checkpoint or converted folder"),
    "freeze_llm": BOOL,
    "freeze_vision_tower": BOOL,
    "freeze_projector": BOOL,
    "vision_lora": BOOL,
    "image_folder": _text_or_none("None or a folder"),
    "name": Rule(lambda v: v is None or isinstance(v, str), "None or a string"),
    "author": Rule(lambda v: v is None or isinstance(v, str), "None or a string"),
    "skip_bad_rows": BOOL,
    "val_size": Rule(lambda v: _is_number(v) and 0 <= v < 1, "a number from 0 up to (not including) 1"),
    "eval_steps": _ints(0),
    "save_best": BOOL,
    "pref_beta": POSITIVE,
    "pref_loss": Rule(lambda v: v in ("sigmoid", "hinge", "ipo"), "one of sigmoid, hinge, ipo"),
    "pref_ftx": NON_NEGATIVE,
    "dpo_label_smoothing": Rule(lambda v: _is_number(v) and 0 <= v < 0.5, "a number from 0 up to 0.5"),
    "simpo_gamma": NON_NEGATIVE,
    "trust_remote_code": BOOL,
    "betas": BETAS,
    "weight_decay": NON_NEGATIVE,
    "max_norm": Rule(lambda v: v is None or (_is_number(v) and v > 0), "a number > 0, or None for no clipping"),
    "log_interval": _ints(1),
    "seed": _ints(0, none_ok=True),
    "dataloader_num_workers": _ints(0),
    "evaluation_freq": _ints(0),
    "evaluation_inputs": Rule(
        lambda v: isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v), "a list of prompts"
    ),
    "save_hf_at_end": BOOL,
}

# Structured fields, checked where a config or option sets them directly rather than through a knob.
FIELDS: dict[str, Rule] = {
    "optim_wrapper.optimizer.lr": POSITIVE,
    "optim_wrapper.optimizer.betas": BETAS,
    "optim_wrapper.optimizer.weight_decay": NON_NEGATIVE,
    "optim_wrapper.accumulative_counts": _ints(1),
    "optim_wrapper.dtype": DTYPE,
    "train_dataloader.batch_size": _ints(1),
    "train_dataloader.num_workers": _ints(0),
    "train_dataset.max_length": _ints(2),
    "train_dataset.pack_to_max_length": BOOL,
    "train_cfg.max_epochs": _ints(1, none_ok=True),
    "train_cfg.max_iters": _ints(1, none_ok=True),
    "default_hooks.checkpoint.interval": _ints(1),
    "default_hooks.checkpoint.max_keep_ckpts": _ints(1, keep_all=True),
    "default_hooks.logger.interval": _ints(1),
    "model.pretrained_model_name_or_path": KNOBS["pretrained_model_name_or_path"],
    "model.finetune_type": Rule(lambda v: v in FINETUNE_TYPES, f"one of {', '.join(FINETUNE_TYPES)}"),
    "model.dtype": DTYPE,
    "model.loss_chunk_size": _ints(0),
    "model.lora.r": _ints(1),
    "model.lora.lora_alpha": POSITIVE,
    "model.lora.lora_dropout": Rule(lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "model.freeze.trainable_layers": _ints(1),
}

# Dicts without a ``type`` whose keys are known: the keys an option may add to them.
TYPELESS_KEYS: dict[str, Callable[[], set[str]]] = {
    "model.lora": lambda: _lora_config_fields(),
    "model.freeze": lambda: {"trainable_layers", "trainable_modules"},
    "model.quantization": lambda: {"bnb_4bit_quant_type", "bnb_4bit_use_double_quant", "bnb_4bit_quant_storage"},
    "randomness": lambda: {"seed", "diff_rank_seed", "deterministic"},
}


# Arguments known to be accepted by the shipped types, so that the common options need no import of the
# class (seconds); any other new key is looked up in the class's signature. A test keeps these true.
KNOWN_ARGUMENTS: dict[str, set[str]] = {
    "train_cfg": {"max_epochs", "max_iters", "nonfinite", "val_begin", "val_interval", "sequence_parallel_size"},
}


def _lora_config_fields() -> set[str]:
    import dataclasses

    from peft import LoraConfig

    return {f.name for f in dataclasses.fields(LoraConfig)}


# ----------------------------------------------------------------------------- dotted access


def get_path(tree: Any, path: str) -> tuple[bool, Any]:
    """``(found, value)`` of a dotted path (``model.lora.r``, ``param_scheduler.0.end``) in nested dicts/lists."""
    node = tree
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False, None
    return True, node


def _registry_for(path: str):
    """The registry that builds the dict at ``path``, for looking up the arguments its type accepts."""
    from xtune import registry

    first, _, rest = path.partition(".")
    table = {
        "model": registry.MODELS,
        "train_dataset": registry.DATASETS,
        "train_cfg": registry.LOOPS,
        "optim_wrapper": registry.OPTIM_WRAPPERS,
        "optim_wrapper.optimizer": registry.OPTIMIZERS,
        "train_dataloader.dataset": registry.DATASETS,
        "train_dataloader.sampler": registry.DATA_SAMPLERS,
    }
    if path in table:
        return table[path]
    if first == "param_scheduler":
        return registry.PARAM_SCHEDULERS
    if first in ("default_hooks", "custom_hooks") and rest and "." not in rest:
        return registry.HOOKS
    return None


def _accepted_keys(path: str, node: dict) -> set[str] | None:
    """Keys an option may add to the dict at ``path``; None when any key may be added."""
    if path in TYPELESS_KEYS:
        return TYPELESS_KEYS[path]()
    kind = node.get("type")
    registry = _registry_for(path) if kind else None
    if registry is None or not isinstance(kind, str):
        return None if kind or path else set()  # the top level takes no new keys
    try:
        cls = registry.get(kind)
    except (KeyError, ImportError):
        cls = None
    if cls is None:
        return None
    params = inspect.signature(cls).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params} | {"type"}


def option_key_problems(tree: dict, keys: list[str]) -> list[str]:
    """What is wrong with each ``--cfg-options`` key, against the config (before references resolve)."""
    problems = []
    for key in keys:
        problem = _key_problem(tree, key)
        if problem:
            problems.append(problem)
    return problems


def _key_problem(tree: dict, key: str) -> str | None:
    node: Any = tree
    done: list[str] = []
    for part in key.split("."):
        where = ".".join(done)
        if isinstance(node, (list, tuple)):
            if part.isdigit() and int(part) < len(node):
                node = node[int(part)]
                done.append(part)
                continue
            return f"'{key}': {where} is a list of {len(node)}; use an index from 0 to {len(node) - 1}"
        if isinstance(node, str) and "${" in node:
            return f"'{key}': {where} is '{node}', taken from a knob; set that knob's keys instead"
        if not isinstance(node, dict):
            return f"'{key}': {where} is {node!r}, not a dict; set {where} itself"
        if part in node:
            node = node[part]
            done.append(part)
            continue
        if part in KNOWN_ARGUMENTS.get(where, ()):
            node = {}
            done.append(part)
            continue
        accepted = _accepted_keys(where, node)
        if accepted is None or part in accepted:
            node = {}  # a new dict: keys under it are checked against what is known of it
            done.append(part)
            continue
        names = sorted({str(k) for k in node} | accepted)
        close = difflib.get_close_matches(part, names, n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        container = f"{where}" if where else "the config's top level"
        return f"'{key}': {container} has no key '{part}'{hint}"
    return None


# ----------------------------------------------------------------------------- values


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def value_problems(raw: dict, resolved: dict | None) -> list[str]:
    """Type and range problems of the knobs and the structured fields set directly.

    Args:
        raw: The config with options applied, before ``${knob}`` references are resolved.
        resolved: The same config resolved; None when it could not be: only the knobs that are plain
            values are checked then.
    """
    problems = []
    for name, rule in KNOBS.items():
        value = raw.get(name) if resolved is None else resolved.get(name)
        if name not in raw or (resolved is None and isinstance(value, str) and "${" in value):
            continue
        if not rule.check(value):
            problems.append(f"{name}={_short(value)}: expected {rule.expected}")
    if resolved is None:
        return problems
    for path, rule in FIELDS.items():
        found, value = get_path(resolved, path)
        _, raw_value = get_path(raw, path)
        if found and not (isinstance(raw_value, str) and "${" in raw_value) and not rule.check(value):
            problems.append(f"{path}={_short(value)}: expected {rule.expected}")
    problems += _loop_problems(resolved)
    problems += _scheduler_problems(resolved.get("param_scheduler", []))
    return problems


def _loop_problems(resolved: dict) -> list[str]:
    train_cfg = resolved.get("train_cfg")
    if not isinstance(train_cfg, dict):
        return []
    epochs, iters = train_cfg.get("max_epochs"), train_cfg.get("max_iters")
    if epochs is None and iters is None:
        return ["train_cfg: sets neither max_epochs nor max_iters; set max_epochs=N (or train_cfg.max_iters=N)"]
    if epochs is not None and iters is not None:
        return [
            f"train_cfg: sets both max_epochs={epochs!r} and max_iters={iters!r}; keep one "
            "(train_cfg.max_epochs=None to train by iterations)"
        ]
    return []


def _scheduler_problems(schedulers: Any) -> list[str]:
    items = schedulers if isinstance(schedulers, (list, tuple)) else [schedulers]
    if schedulers is None:
        return []
    problems = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("type"), str):
            problems.append(
                f"param_scheduler[{i}]={_short(item)}: expected dict(type='SchedulerName', ...) "
                "(param_scheduler=[] for a constant lr)"
            )
    return problems
