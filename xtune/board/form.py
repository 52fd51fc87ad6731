"""The Train form: its values -> a config and the exact ``xtune train`` command that runs it.

A run starts from a shipped config (as ``xtune list-cfg`` lists them) or from a config the board writes
from ``_base_`` files (finetune type, stage, schedule, runtime) plus the model and dataset. Knobs the
user changed become ``--cfg-options KEY=VALUE``, only those that differ from the config, so the command
on the page is the one a config user would type.
"""

import re
import shlex
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from xtune.board.stages import STAGES
from xtune.config import find_config, list_configs, load_config
from xtune.errors import ConfigError, XtuneError
from xtune.hf.dtypes import DTYPE_NAMES
from xtune.paths import CONFIG_DIR, MODEL_DIR

NEW_CONFIG = "(new config from the fields below)"
AUTO_FORMAT = "auto"
NO_DEEPSPEED = "none"
DTYPE_CHOICES = DTYPE_NAMES
LORA_TYPES = ("lora", "dora", "qlora")
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
HUB_NAME = re.compile(r"^[\w.-]+/[\w.-]+$")


@dataclass
class TrainForm:
    """What the Train tab holds; field names are the page's knob names."""

    config: str = NEW_CONFIG
    run_name: str = ""
    model: str = "tiny_llama"
    finetune_type: str = "lora"
    stage: str = "sft"
    data_path: str = "alpaca_demo"
    data_format: str = AUTO_FORMAT
    template: str = "auto"
    lr: Any = 2e-4
    epochs: Any = 3
    max_length: Any = 2048
    batch_size: Any = 1
    accumulation: Any = 16
    lora_r: Any = 64
    lora_alpha: Any = 16
    lora_targets: str = "all-linear"
    packing: bool = True
    dtype: str = "auto"
    deepspeed: str = NO_DEEPSPEED
    gpus: Any = 1
    save_steps: Any = 500
    log_interval: Any = 10
    name: str = "xtune"
    author: str = "the xtune team"


FORM_FIELDS = [f.name for f in fields(TrainForm)]

# form field -> config key (dotted: nested), for the knobs that become --cfg-options.
KNOBS = {
    "model": "pretrained_model_name_or_path",
    "finetune_type": "model.finetune_type",
    "data_path": "data_path",
    "data_format": "data_format",
    "template": "prompt_template",
    "lr": "lr",
    "epochs": "max_epochs",
    "max_length": "max_length",
    "batch_size": "batch_size",
    "accumulation": "accumulative_counts",
    "lora_r": "model.lora.r",
    "lora_alpha": "model.lora.lora_alpha",
    "lora_targets": "model.lora.target_modules",
    "packing": "pack_to_max_length",
    "dtype": "dtype",
    "save_steps": "save_steps",
    "log_interval": "log_interval",
    "name": "name",
    "author": "author",
}
# whole numbers at least this large
MINIMUM = {
    "epochs": 1,
    "max_length": 16,
    "batch_size": 1,
    "accumulation": 1,
    "lora_r": 1,
    "gpus": 1,
    "save_steps": 1,
    "log_interval": 1,
}


def config_names() -> list[str]:
    """The shipped configs, as ``xtune list-cfg`` lists them."""
    return [path.stem for path in list_configs()]


def deepspeed_presets() -> list[str]:
    return sorted(path.stem for path in (CONFIG_DIR / "deepspeed").glob("*.json"))


def finetune_types() -> tuple[str, ...]:
    from xtune.model.finetune import FINETUNE_TYPES

    return FINETUNE_TYPES


def templates() -> list[str]:
    from xtune.dataset.templates import TEMPLATES

    return ["auto", *TEMPLATES]


def registry_datasets() -> list[str]:
    """Names in ``data/dataset_info.json``."""
    from xtune.dataset.dataset_info import load_dataset_info

    return list(load_dataset_info())


def data_formats() -> list[str]:
    from xtune.dataset.dataset_info import FORMATS

    return [AUTO_FORMAT, *(f for f in FORMATS if f != "preference")]


# ----------------------------------------------------------------------------- config text
def new_config_text(form: TrainForm) -> str:
    """The config the board writes when no shipped config is chosen: bases plus model and data."""
    if form.stage not in STAGES:
        raise ConfigError(f"stage must be one of {', '.join(STAGES)}, got '{form.stage}'.")
    if form.finetune_type not in finetune_types():
        raise ConfigError(f"finetune type must be one of {', '.join(finetune_types())}, got '{form.finetune_type}'.")
    base = CONFIG_DIR.resolve() / "_base_"
    bases = [
        base / "models" / f"{form.finetune_type}.py",
        base / STAGES[form.stage].dataset_base,
        base / "schedules" / "cosine.py",
        base / "default_runtime.py",
    ]
    data_format = None if form.data_format == AUTO_FORMAT else form.data_format
    lines = [
        f"# Written by `xtune board`: {form.finetune_type}, stage {form.stage}. Train it with `xtune train THIS_FILE`.",
        "_base_ = [",
        *(f"    {str(path)!r}," for path in bases),
        "]",
        f"pretrained_model_name_or_path = {form.model.strip()!r}",
        f"data_path = {form.data_path.strip()!r}",
        f"prompt_template = {form.template!r}",
        "# {{name}} and {{author}} in the data (identity data) are filled from these",
        f"name = {form.name!r}",
        f"author = {form.author!r}",
        "train_dataset = dict(placeholders=dict(name='${name}', author='${author}'))",
    ]
    if data_format is not None:  # else the stage's base decides (pretraining: text)
        lines.insert(lines.index(f"data_path = {form.data_path.strip()!r}") + 1, f"data_format = {data_format!r}")
    return "\n".join(lines) + "\n"


def _load_text(text: str, file_name: str, options: dict | None = None, resolved: bool = False):
    """Load a config held as text (the board's generated config before it is written)."""
    with tempfile.TemporaryDirectory(prefix="xtune_board_") as folder:
        path = Path(folder) / file_name
        path.write_text(text)
        return load_config(path, options, resolved=resolved)


def _get(cfg, dotted: str) -> Any:
    value: Any = cfg
    for part in dotted.split("."):
        if not hasattr(value, "get"):
            return None
        value = value.get(part)
    return value


def _show(field: str, value: Any) -> Any:
    """A config value as the form shows it."""
    if field == "data_format" and value is None:
        return AUTO_FORMAT
    if field == "lora_targets" and isinstance(value, (list, tuple)):
        return ",".join(value)
    return value


def form_from_config(config: str, current: TrainForm | None = None) -> TrainForm:
    """The form filled from a shipped config (or, for :data:`NEW_CONFIG`, from the bases the board
    writes with ``current``'s model, finetune type, stage and data)."""
    current = current or TrainForm()
    if config == NEW_CONFIG:
        cfg = _load_text(new_config_text(current), "new_config.py")
        form = TrainForm(**{**asdict(current), "config": NEW_CONFIG})
    else:
        cfg = load_config(config, resolved=False)
        form = TrainForm(config=config, run_name=find_config(config).stem)
    for field, key in KNOBS.items():
        value = _get(cfg, key)
        if value is not None or field == "data_format":
            setattr(form, field, _show(field, value))
    if config != NEW_CONFIG:
        form.stage = ""  # the shipped config decides its stage
    if not form.run_name:
        form.run_name = f"{Path(form.model).name}_{form.finetune_type}_{Path(form.data_path).stem}"
    return form


# ----------------------------------------------------------------------------- checking
def _number(field: str, value: Any, problems: list[str]) -> float | None:
    try:
        number = float(str(value).strip())
    except ValueError:
        problems.append(f"{field} must be a number, got '{value}'")
        return None
    if number != number or number in (float("inf"), float("-inf")):
        problems.append(f"{field} must be a finite number, got '{value}'")
        return None
    return number


def _parsed(form: TrainForm, problems: list[str]) -> dict[str, Any]:
    """The knob values as the config wants them; bad ones are added to ``problems``."""
    values: dict[str, Any] = {}
    for field, minimum in MINIMUM.items():
        number = _number(field, getattr(form, field), problems)
        if number is None:
            continue
        if number != int(number) or number < minimum:
            problems.append(f"{field} must be a whole number >= {minimum}, got '{getattr(form, field)}'")
            continue
        values[field] = int(number)
    for field in ("lr", "lora_alpha"):
        number = _number(field, getattr(form, field), problems)
        if number is not None and number <= 0:
            problems.append(f"{field} must be above 0, got '{getattr(form, field)}'")
        elif number is not None:
            values[field] = number
    targets = [t.strip() for t in str(form.lora_targets).split(",") if t.strip()]
    if not targets:
        problems.append("lora_targets must be all-linear or module names separated by commas, e.g. q_proj,v_proj")
    values["lora_targets"] = targets[0] if targets == ["all-linear"] else targets
    values["packing"] = bool(form.packing)
    values["data_format"] = None if form.data_format == AUTO_FORMAT else form.data_format
    for field in ("model", "data_path", "name", "author", "template", "finetune_type", "dtype"):
        values[field] = str(getattr(form, field) or "").strip()
    return values


def _check_choices(form: TrainForm, values: dict[str, Any], problems: list[str]) -> None:
    if not RUN_NAME.match(form.run_name or ""):
        problems.append(
            f"run name must be letters, digits, '_', '.' or '-' (it names the work dir), got '{form.run_name}'"
        )
    for field, choices in (
        ("finetune_type", finetune_types()),
        ("dtype", DTYPE_CHOICES),
        ("template", templates()),
        ("data_format", data_formats()),
        ("deepspeed", [NO_DEEPSPEED, *deepspeed_presets()]),
    ):
        if getattr(form, field) not in choices:
            problems.append(f"{field} must be one of {', '.join(choices)}, got '{getattr(form, field)}'")
    model = values["model"]
    if not model:
        problems.append("model is empty: give a model folder, a Hugging Face hub name or a shipped model name")
    elif not (Path(model).expanduser().exists() or (MODEL_DIR / model).is_dir() or HUB_NAME.match(model)):
        problems.append(f"model '{model}' not found: no such folder, and not a hub name like Qwen/Qwen2.5-0.5B")
    if not values["data_path"]:
        problems.append("dataset is empty: pick a name from data/dataset_info.json or give a data file path")
    else:
        from xtune.dataset.dataset_info import resolve_dataset

        try:
            resolve_dataset(values["data_path"], values["data_format"])
        except XtuneError as exc:
            problems.append(str(exc))


def shell_word(word: str) -> str:
    """``word`` quoted for a POSIX shell, readably: ``"name='Ada'"`` rather than shlex's ``'name='"'"'Ada'"'"''``."""
    quoted = shlex.quote(word)
    if quoted == word or any(char in word for char in '"$`\\!'):
        return quoted
    return f'"{word}"'


# ----------------------------------------------------------------------------- the plan
@dataclass
class TrainPlan:
    """A run the board can start: the config, the work dir and the command line.

    Attributes:
        config: What ``xtune train`` is given: a shipped config name or the generated config's path.
        work_dir: The run's work dir.
        options: ``--cfg-options`` items, ``KEY=VALUE`` with values as Python literals.
        deepspeed: A DeepSpeed preset, or None.
        gpus: Processes to start (``NPROC_PER_NODE``).
        config_text: The generated config, written to ``config`` before the run (None: shipped config).
    """

    config: str
    work_dir: Path
    options: list[str]
    deepspeed: str | None
    gpus: int
    config_text: str | None = None

    def args(self, resume: bool = False) -> list[str]:
        """The arguments after ``xtune``."""
        args = ["train", self.config, "--work-dir", str(self.work_dir)]
        if self.deepspeed:
            args += ["--deepspeed", self.deepspeed]
        if resume:
            args += ["--resume", "auto"]
        if self.options:
            args += ["--cfg-options", *self.options]
        return args

    def env(self) -> dict[str, str]:
        return {"NPROC_PER_NODE": str(self.gpus)} if self.gpus > 1 else {}

    def command(self, resume: bool = False) -> str:
        """The shell command that does what Start (or Resume) does."""
        prefix = "".join(f"{key}={value} " for key, value in self.env().items())
        return prefix + " ".join(shell_word(word) for word in ["xtune", *self.args(resume)])

    def write_config(self) -> None:
        if self.config_text is not None:
            Path(self.config).parent.mkdir(parents=True, exist_ok=True)
            Path(self.config).write_text(self.config_text)

    def load(self):
        """The run's config, resolved, with the options applied (what ``xtune train`` will build)."""
        from xtune.config import parse_cfg_options

        options = parse_cfg_options(self.options)
        if self.config_text is None:
            return load_config(self.config, options)
        return _load_text(self.config_text, Path(self.config).name, options, resolved=True)

    def resolved_config(self) -> str:
        """The fully resolved config, as ``xtune print-config`` prints it."""
        return self.load().pretty_text


def plan_run(form: TrainForm, root: str | Path) -> TrainPlan:
    """Check the form and turn it into a :class:`TrainPlan`.

    Raises:
        ConfigError: Every problem with the form at once (bad knob values, unknown choices, a missing
            model or data file), each saying what was given and what is expected.
    """
    problems: list[str] = []
    values = _parsed(form, problems)
    _check_choices(form, values, problems)
    if form.config != NEW_CONFIG and form.config not in config_names() and not Path(form.config).is_file():
        problems.append(f"config '{form.config}' is not a shipped config; pick one from the list")
    if problems:
        raise ConfigError("; ".join(p.rstrip(".") for p in problems) + ".")
    work_dir = Path(root).expanduser().resolve() / form.run_name
    if form.config == NEW_CONFIG:
        text = new_config_text(TrainForm(**{**asdict(form), **{k: values[k] for k in ("model", "data_path")}}))
        config_path = str(work_dir / "board_config" / f"{form.run_name}.py")
        base = _load_text(text, "new_config.py")
    else:
        text, config_path = None, form.config
        base = load_config(form.config, resolved=False)
    options = []
    lora = values["finetune_type"] in LORA_TYPES
    for field, key in KNOBS.items():
        if field.startswith("lora_") and not lora:
            continue
        if field in ("name", "author") and "name" not in base:
            continue  # the config has no identity placeholders
        if values[field] != _get(base, key):
            options.append(f"{key}={values[field]!r}")
    deepspeed = None if form.deepspeed == NO_DEEPSPEED else form.deepspeed
    return TrainPlan(config_path, work_dir, options, deepspeed, values["gpus"], text)
