"""Dataset names: the ``dataset_info.json`` registry and :class:`DatasetSpec`.

A dataset is named by ``data_path``, which is one of:

* a name registered in a ``dataset_info.json`` registry (the shipped one is ``data/dataset_info.json``;
  a user may pass their own, LLaMA-Factory's ``data/dataset_info.json`` included). Entries use
  LLaMA-Factory's keys (its ``data/README.md``)::

      "my_data": {"file_name": "my_data.jsonl",          # relative to the registry file's folder
                  "formatting": "sharegpt",              # one of FORMATS; default "alpaca"
                  "columns": {"messages": "dialog"},     # schema field -> column in the file
                  "tags": {"user_tag": "user"}}          # sharegpt role/content names
      "hub_data": {"hf_hub_url": "owner/name", "subset": "en", "split": "train", "num_samples": 1000}

  Image-text entries (``"columns": {"images": ...}``, read by ``VisionSFTDataset``) keep their image paths
  relative to the registry file's folder, as LLaMA-Factory's ``media_dir`` defaults to its dataset folder
  (``image_folder`` overrides it; see :mod:`xtune.dataset.vision`).

* an existing local file (.json, .jsonl, .parquet, .csv, .txt) or a folder of such files;
* otherwise a Hugging Face Hub dataset name, read with ``datasets.load_dataset``.

A registry is read whole but checked one entry at a time, when the entry is used: a malformed entry
that is not asked for does not block the others. Every key LLaMA-Factory defines is accepted; the ones
xtune cannot honour for the chosen entry (a ModelScope-only source, a loading script, a cloud file) are
named together in one error. Columns that only another stage can use (images, chosen/rejected,
kto_tag) are carried in :class:`DatasetSpec` and refused by :func:`check_stage` for the wrong stage.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xtune import paths
from xtune.errors import ConfigError, DataError

FORMATS = ("alpaca", "sharegpt", "openai", "text", "preference")
# Fields a ``columns`` mapping may name; each maps to the column of the file that holds it.
COLUMN_FIELDS = (
    "instruction",
    "input",
    "output",
    "system",
    "history",
    "messages",
    "tools",
    "text",
    "chosen",
    "rejected",
    "images",
    "videos",
    "audios",
    "kto_tag",
)
# LLaMA-Factory's names for the same fields, so its dataset_info entries can be copied unchanged.
COLUMN_ALIASES = {
    "prompt": "instruction",
    "query": "input",
    "response": "output",
    "conversations": "messages",
}
# ShareGPT key and role names (LLaMA-Factory's "tags"); DatasetSpec.tags overrides them one by one.
DEFAULT_TAGS = {
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
    "system_tag": "system",
    "function_tag": "function_call",
    "observation_tag": "observation",
}
TAG_KEYS = tuple(DEFAULT_TAGS)
DATA_EXTENSIONS = (".json", ".jsonl", ".parquet", ".csv", ".txt")
# Where an entry's rows come from, in LLaMA-Factory's order of preference (the first one present wins).
SOURCE_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name", "file_name")
ENTRY_KEYS = (
    *SOURCE_KEYS,
    "file_sha1",  # LLaMA-Factory: "does not affect training"; accepted and not checked
    "formatting",
    "ranking",
    "subset",
    "split",
    "folder",
    "num_samples",
    "columns",
    "tags",
    "description",  # xtune's own
)
# Sources xtune cannot read, and what to do instead.
_UNSUPPORTED_SOURCES = {
    "ms_hub_url": "ModelScope Hub datasets are not read by xtune (only the Hugging Face Hub is)",
    "om_hub_url": "Modelers (openmind) Hub datasets are not read by xtune (only the Hugging Face Hub is)",
    "script_url": "dataset loading scripts are not run by xtune (the datasets library dropped them)",
    "cloud_file_name": "s3/gcs cloud files are not read by xtune",
}
# Columns only another stage can use: training SFT/PT on such data would silently drop them.
STAGE_COLUMNS = {
    "images": "the multimodal (vision) stage: VisionSFTDataset",
    "videos": "a multimodal (video) stage, which xtune does not have yet",
    "audios": "a multimodal (audio) stage, which xtune does not have yet",
    "kto_tag": "the kto stage (the label says whether each reply is desirable)",
    "chosen": "the preference stages (dpo, orpo, simpo, rm)",
    "rejected": "the preference stages (dpo, orpo, simpo, rm)",
}
MEDIA_COLUMNS = ("images", "videos", "audios")


@dataclass
class DatasetSpec:
    """Where a dataset lives and how to read its rows into the conversation schema."""

    name: str
    """The registry name, or the path / Hub name as the user gave it."""
    path: str
    """The resolved file, folder or Hub dataset name."""
    data_format: str
    """One of :data:`FORMATS`."""
    columns: dict[str, str] = field(default_factory=dict)
    """Schema field -> column in the file, e.g. ``{"instruction": "prompt"}``; missing fields use defaults."""
    tags: dict[str, str] = field(default_factory=dict)
    """ShareGPT role and content names (keys in :data:`TAG_KEYS`); missing tags use defaults."""
    split: str = "train"
    """The split to read from a Hub dataset (local files have no splits)."""
    from_hub: bool = False
    subset: str | None = None
    """A Hub dataset's configuration name (LLaMA-Factory's ``subset``)."""
    folder: str | None = None
    """A folder inside a Hub dataset's repository (LLaMA-Factory's ``folder``)."""
    num_samples: int | None = None
    """Rows to draw (seeded; repeats rows when larger than the dataset), LLaMA-Factory's ``num_samples``."""
    max_samples: int | None = None
    """Use only the first rows of the dataset (a mixture item's ``max_samples``)."""
    weight: float = 1.0
    """Sampling weight in a mixture: how many times each row is used per epoch (0.5: a seeded half)."""

    @property
    def ranking(self) -> bool:
        """Preference data (LLaMA-Factory's ``"ranking": true``)."""
        return self.data_format == "preference"


def load_dataset_info(path: str | None = None) -> dict[str, Any]:
    """Read a dataset registry. Entries are checked when one is used (:func:`resolve_dataset`).

    Args:
        path: A registry JSON file; ``None`` reads the shipped ``data/dataset_info.json`` (an empty
            registry if it is absent).

    Returns:
        Registry name -> entry, as written in the file.

    Raises:
        ConfigError: The file is missing, is not valid JSON, or is not an object of name -> entry.
    """
    file = Path(path).expanduser() if path is not None else paths.DATASET_INFO
    if not file.is_file():
        if path is None:
            return {}
        raise ConfigError(f"dataset registry {file} not found. Pass the path of an existing dataset_info.json.")
    try:
        info = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ConfigError(
            f"{file}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}. Fix the registry file."
        ) from None
    if not isinstance(info, dict):
        raise ConfigError(f"{file}: expected a JSON object of name -> entry, got {type(info).__name__}.")
    return info


def _entry_problems(entry: Any) -> list[str]:
    """Everything malformed about one registry entry (not yet whether xtune can use it)."""
    if not isinstance(entry, dict):
        return [f"expected an object with 'file_name' or 'hf_hub_url', got {entry!r}"]
    problems = []
    unknown = sorted(set(entry) - set(ENTRY_KEYS))
    if unknown:
        problems.append(f"unknown key(s) {unknown} (valid keys: {', '.join(ENTRY_KEYS)})")
    if not any(key in entry for key in SOURCE_KEYS):
        problems.append("no source: give 'file_name' (a local file or folder) or 'hf_hub_url' (a Hub name)")
    for key in (*SOURCE_KEYS, "file_sha1", "subset", "split", "folder", "description"):
        if key in entry and not isinstance(entry[key], str):
            problems.append(f"'{key}' must be a string, got {entry[key]!r}")
    if "ranking" in entry and not isinstance(entry["ranking"], bool):
        problems.append(f"'ranking' must be true or false, got {entry['ranking']!r}")
    num = entry.get("num_samples")
    if num is not None and (isinstance(num, bool) or not isinstance(num, int) or num < 1):
        problems.append(f"'num_samples' must be a positive integer, got {num!r}")
    for key, check in (("formatting", _check_format), ("columns", _normalise_columns), ("tags", _normalise_tags)):
        if key in entry:
            try:
                check(entry[key], f"'{key}'")
            except ConfigError as err:
                problems.append(str(err).rstrip("."))
    return problems


def _source(entry: dict[str, Any]) -> str:
    """The key that says where the rows come from (LLaMA-Factory: Hugging Face before ModelScope...)."""
    return next(key for key in SOURCE_KEYS if key in entry)


def _check_format(data_format: Any, where: str) -> str:
    if data_format not in FORMATS:
        raise ConfigError(f"{where}: unknown data format {data_format!r}. Valid formats: {', '.join(FORMATS)}.")
    return data_format


def _check_str_dict(value: Any, where: str, valid: tuple[str, ...]) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ConfigError(f"{where}: expected an object of name -> string, got {value!r}.")
    unknown = sorted(set(value) - set(valid))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}. Valid keys: {', '.join(valid)}.")
    return dict(value)


def _normalise_columns(columns: Any, where: str) -> dict[str, str]:
    columns = _check_str_dict(columns, where, COLUMN_FIELDS + tuple(COLUMN_ALIASES))
    return {COLUMN_ALIASES.get(key, key): column for key, column in columns.items()}


def _normalise_tags(tags: Any, where: str) -> dict[str, str]:
    return _check_str_dict(tags, where, TAG_KEYS)


def _looks_like_path(value: str) -> bool:
    # Hub names are "owner/name": one slash, no leading "./", "/" or "~", no data file extension.
    return (
        value.startswith((".", "/", "~"))
        or "\\" in value
        or value.count("/") > 1
        or value.lower().endswith(DATA_EXTENSIONS)
    )


def _from_registry(name: str, entry: Any, registry: Path) -> DatasetSpec:
    """A registry entry as a spec, or one ConfigError naming everything wrong or unusable in it."""
    where = f"{registry}, entry '{name}'"
    problems = _entry_problems(entry)
    if problems:
        raise ConfigError(f"{where}: " + "; ".join(problems) + ". Fix the entry.")
    source = _source(entry)
    unusable = []
    if source in _UNSUPPORTED_SOURCES:
        unusable.append(f"'{source}': {_UNSUPPORTED_SOURCES[source]}")
    from_hub = source == "hf_hub_url"
    split = entry.get("split", "train")
    if not from_hub and split != "train":
        unusable.append(f"'split': {split!r} (a local file has only the 'train' split)")
    if unusable:
        raise ConfigError(
            f"{where}: xtune cannot use " + "; ".join(unusable) + ". Download the data and register it with "
            "'file_name' (a local .json/.jsonl/.parquet/.csv/.txt file or folder), or give 'hf_hub_url'."
        )
    return DatasetSpec(
        name=name,
        path=entry[source] if from_hub else str(registry.parent / entry["file_name"]),
        data_format="preference" if entry.get("ranking") else entry.get("formatting", "alpaca"),
        columns=_normalise_columns(entry.get("columns"), ""),
        tags=dict(entry.get("tags") or {}),
        split=split,
        from_hub=from_hub,
        # LLaMA-Factory passes subset/folder to the Hub loader only; local files have neither.
        subset=entry.get("subset") if from_hub else None,
        folder=entry.get("folder") if from_hub else None,
        num_samples=entry.get("num_samples"),
    )


def resolve_dataset(
    data_path: str,
    data_format: str | None = None,
    columns: dict[str, str] | None = None,
    tags: dict[str, str] | None = None,
    dataset_info: str | None = None,
) -> DatasetSpec:
    """Turn a registry name, local path or Hub name into a :class:`DatasetSpec`.

    Args:
        data_path: A name in the registry, an existing file or folder, or a Hub dataset name.
        data_format: Overrides the registry's format. For an unregistered path the default is
            ``"text"`` for .txt files and ``"alpaca"`` otherwise.
        columns: Merged over the registry's columns (these win).
        tags: Merged over the registry's tags (these win).
        dataset_info: A user's own registry file instead of the shipped one.

    Raises:
        ConfigError: Unknown format, bad columns or tags, a bad or unusable registry entry.
        DataError: ``data_path`` looks like a local path but does not exist.
    """
    if data_format is not None:
        _check_format(data_format, "data_format")
    columns = _normalise_columns(columns, "columns")
    tags = _normalise_tags(tags, "tags")
    info = load_dataset_info(dataset_info)
    if data_path in info:
        registry = Path(dataset_info).expanduser() if dataset_info else paths.DATASET_INFO
        spec = _from_registry(data_path, info[data_path], registry)
        spec.data_format = data_format or spec.data_format
        spec.columns = {**spec.columns, **columns}
        spec.tags = {**spec.tags, **tags}
    else:
        local = Path(data_path).expanduser()
        if local.exists():
            if data_format is None:
                files = list_data_files(local, data_path)
                data_format = "text" if files[0].suffix.lower() == ".txt" else "alpaca"
            spec = DatasetSpec(data_path, str(local), data_format, columns, tags)
        elif _looks_like_path(data_path):
            raise DataError(
                f"dataset {data_path!r} not found: no such file or folder, and it is not a name in the dataset "
                f"registry. Check the path, or register it in {dataset_info or paths.DATASET_INFO}."
            )
        else:
            spec = DatasetSpec(data_path, data_path, data_format or "alpaca", columns, tags, from_hub=True)
    if spec.data_format == "text" and "text" not in spec.columns and "instruction" in spec.columns:
        # LLaMA-Factory's pretraining entries name the text column as the "prompt" column.
        spec.columns["text"] = spec.columns.pop("instruction")
    return spec


def check_stage(spec: DatasetSpec, stage: str, uses: tuple[str, ...] = ()) -> None:
    """Refuse data whose columns the stage would silently drop (images for SFT, kto_tag for DPO...).

    Args:
        spec: The dataset.
        stage: The stage's name for the message (``"sft"``, ``"pt"``, ``"dpo"``...).
        uses: The :data:`STAGE_COLUMNS` fields the stage does use (``("chosen", "rejected")`` for dpo).

    Raises:
        ConfigError: Naming every column the stage cannot use and the stage that can.
    """
    refused = [key for key in STAGE_COLUMNS if key in spec.columns and key not in uses]
    if spec.ranking and "chosen" not in uses and "chosen" not in refused:
        refused.insert(0, "ranking")
    if not refused:
        return
    why = "; ".join(
        f"'{key}' is used by {STAGE_COLUMNS.get(key, STAGE_COLUMNS['chosen'])}"
        if key != "ranking"
        else "'ranking': true marks preference (chosen/rejected) data, used by the preference stages "
        "(dpo, orpo, simpo, rm)"
        for key in refused
    )
    raise ConfigError(
        f"dataset '{spec.name}' cannot train the {stage} stage: {why}. Training {stage} on it would drop "
        f"that data silently. Train it with the stage that uses it, or pick a dataset without it."
    )


def list_data_files(path: Path, name: str) -> list[Path]:
    """The data files of ``path``: itself, or a folder's data files (recursive, sorted, one format)."""
    if path.is_file():
        if path.suffix.lower() not in DATA_EXTENSIONS:
            raise DataError(f"{path}: unsupported file type {path.suffix!r}. Use one of {', '.join(DATA_EXTENSIONS)}.")
        return [path]
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file()
        and p.suffix.lower() in DATA_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    if not files:
        raise DataError(f"{name}: folder has no data files. Put {', '.join(DATA_EXTENSIONS)} files in it.")
    suffixes = sorted({p.suffix.lower() for p in files})
    if len(suffixes) > 1:
        raise DataError(
            f"{name}: folder mixes file types {suffixes}. Keep one format per dataset folder "
            "(register the others as separate datasets)."
        )
    return files
