"""Dataset names: the ``dataset_info.json`` registry and :class:`DatasetSpec`.

Find a dataset and read its raw rows.

A dataset is named by ``data_path``, which is one of:

* a name registered in a ``dataset_info.json`` registry (the shipped one is ``data/dataset_info.json``;
  a user may pass their own). Entries use LLaMA-Factory's keys::

      "my_data": {"file_name": "my_data.jsonl",          # relative to the registry file's folder
                  "formatting": "sharegpt",              # one of FORMATS; default "alpaca"
                  "columns": {"messages": "dialog"},     # schema field -> column in the file
                  "tags": {"user_tag": "user"}}          # sharegpt role/content names
      "hub_data": {"hf_hub_url": "owner/name", "split": "train"}

  ``"ranking": true`` (LLaMA-Factory's flag for preference data) means ``"formatting": "preference"``;
* an existing local file (.json, .jsonl, .parquet, .csv, .txt) or a folder of such files;
* otherwise a Hugging Face Hub dataset name, read with ``datasets.load_dataset``.
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
ENTRY_KEYS = ("file_name", "hf_hub_url", "formatting", "ranking", "columns", "tags", "split", "description")
# One encoder for all values: json.dumps(..., ensure_ascii=False) would build a new one per call.


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


def load_dataset_info(path: str | None = None) -> dict[str, dict[str, Any]]:
    """Read and check a dataset registry.

    Args:
        path: A registry JSON file; ``None`` reads the shipped ``data/dataset_info.json`` (an empty
            registry if it is absent).

    Returns:
        Registry name -> entry, as written in the file.

    Raises:
        ConfigError: The file is missing, is not valid JSON, or an entry is malformed.
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
    for name, entry in info.items():
        _check_entry(file, name, entry)
    return info


def _check_entry(file: Path, name: str, entry: Any) -> None:
    where = f"{file}, entry '{name}'"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected an object with 'file_name' or 'hf_hub_url', got {entry!r}.")
    unknown = sorted(set(entry) - set(ENTRY_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}. Valid keys: {', '.join(ENTRY_KEYS)}.")
    if ("file_name" in entry) == ("hf_hub_url" in entry):
        raise ConfigError(f"{where}: give exactly one of 'file_name' (a local file) or 'hf_hub_url' (a Hub name).")
    for key in ("file_name", "hf_hub_url", "split", "description"):
        if key in entry and not isinstance(entry[key], str):
            raise ConfigError(f"{where}: '{key}' must be a string, got {entry[key]!r}.")
    if "ranking" in entry and not isinstance(entry["ranking"], bool):
        raise ConfigError(f"{where}: 'ranking' must be true or false, got {entry['ranking']!r}.")
    if "formatting" in entry:
        _check_format(entry["formatting"], f"{where}, key 'formatting'")
    _normalise_columns(entry.get("columns"), f"{where}, key 'columns'")
    _normalise_tags(entry.get("tags"), f"{where}, key 'tags'")


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
        ConfigError: Unknown format, bad columns or tags, or a bad registry.
        DataError: ``data_path`` looks like a local path but does not exist.
    """
    if data_format is not None:
        _check_format(data_format, "data_format")
    columns = _normalise_columns(columns, "columns")
    tags = _normalise_tags(tags, "tags")
    info = load_dataset_info(dataset_info)
    if data_path in info:
        entry = info[data_path]
        registry_dir = (Path(dataset_info).expanduser() if dataset_info else paths.DATASET_INFO).parent
        from_hub = "hf_hub_url" in entry
        path = entry["hf_hub_url"] if from_hub else str(registry_dir / entry["file_name"])
        registered = "preference" if entry.get("ranking") else entry.get("formatting", "alpaca")
        return DatasetSpec(
            name=data_path,
            path=path,
            data_format=data_format or registered,
            columns={**_normalise_columns(entry.get("columns"), ""), **columns},
            tags={**entry.get("tags", {}), **tags},
            split=entry.get("split", "train"),
            from_hub=from_hub,
        )
    local = Path(data_path).expanduser()
    if local.exists():
        if data_format is None:
            files = list_data_files(local, data_path)
            data_format = "text" if files[0].suffix.lower() == ".txt" else "alpaca"
        return DatasetSpec(data_path, str(local), data_format, columns, tags)
    if _looks_like_path(data_path):
        raise DataError(
            f"dataset {data_path!r} not found: no such file or folder, and it is not a name in the dataset "
            f"registry. Check the path, or register it in {dataset_info or paths.DATASET_INFO}."
        )
    return DatasetSpec(data_path, data_path, data_format or "alpaca", columns, tags, from_hub=True)


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
