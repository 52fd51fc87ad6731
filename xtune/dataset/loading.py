"""Find a dataset and read its raw rows.

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

:func:`load_rows` returns the file's own columns unchanged plus ``_source`` (the file) and ``_row``
(1-based: the line number for .jsonl and .txt, the row number otherwise) so that
:mod:`xtune.dataset.formats` can say exactly which row is wrong.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from datasets.exceptions import DatasetNotFoundError

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
SOURCE_COLUMN = "_source"
# One encoder for all values: json.dumps(..., ensure_ascii=False) would build a new one per call.
_ENCODER = json.JSONEncoder(ensure_ascii=False)
ROW_COLUMN = "_row"


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
            files = _data_files(local, data_path)
            data_format = "text" if files[0].suffix.lower() == ".txt" else "alpaca"
        return DatasetSpec(data_path, str(local), data_format, columns, tags)
    if _looks_like_path(data_path):
        raise DataError(
            f"dataset {data_path!r} not found: no such file or folder, and it is not a name in the dataset "
            f"registry. Check the path, or register it in {dataset_info or paths.DATASET_INFO}."
        )
    return DatasetSpec(data_path, data_path, data_format or "alpaca", columns, tags, from_hub=True)


def _data_files(path: Path, name: str) -> list[Path]:
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


def load_rows(spec: DatasetSpec) -> datasets.Dataset:
    """Read a dataset's raw rows.

    A .json file holds one JSON list of objects (JSON Lines content is accepted too); .jsonl holds one
    object per line. A .txt file holds one document per line, as ``datasets``' text loader reads it
    (put multi-line documents in a .jsonl ``text`` column instead); blank lines are skipped. CSV values
    are all read as strings; ``_row`` 1 is the first row after the header. A folder is read as all its
    data files (recursively, in sorted order).

    Returns:
        A dataset with the file's columns (in first-seen order) plus ``_source`` and ``_row``. Columns
        holding lists, objects or mixed types are stored as JSON so rows come back exactly as written.

    Raises:
        DataError: A missing, empty, unreadable or invalid file, naming the file and line.
    """
    if spec.from_hub:
        return _load_hub(spec)
    path = Path(spec.path)
    if not path.exists():
        registered = f" (dataset '{spec.name}')" if spec.name != spec.path else ""
        raise DataError(f"{spec.path}{registered}: no such file or folder. Check the path.")
    files = _data_files(path, spec.path)
    fingerprint = _fingerprint(files, spec)
    suffix = files[0].suffix.lower()
    if suffix == ".txt" and spec.data_format != "text":
        raise DataError(
            f"{spec.path}: .txt files hold plain text, which only the 'text' format reads "
            f"(got '{spec.data_format}'). Use data_format='text'."
        )
    if suffix in (".json", ".jsonl"):
        rows: list[dict[str, Any]] = []
        for file in files:
            rows.extend(_read_json(file))
        return _dataset_from_rows(rows, fingerprint)
    if suffix == ".parquet":
        tables = [_read_parquet(file) for file in files]
    elif suffix == ".csv":
        tables = [_read_csv(file) for file in files]
    else:
        tables = [_read_txt(file, spec.columns.get("text", "text")) for file in files]
    table = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
    own = [name for name in table.column_names if name not in (SOURCE_COLUMN, ROW_COLUMN)]
    return datasets.Dataset(table.select(own + [SOURCE_COLUMN, ROW_COLUMN]), fingerprint=fingerprint)


def _load_hub(spec: DatasetSpec) -> datasets.Dataset:
    try:
        dataset = datasets.load_dataset(spec.path, split=spec.split)
    except (DatasetNotFoundError, OSError, ValueError) as err:
        raise DataError(
            f"could not load dataset {spec.path!r} (split {spec.split!r}) from the Hugging Face Hub, and no "
            f"local file or folder has that name: {err}. Check the name, or give a local path."
        ) from err
    n = len(dataset)
    dataset = dataset.add_column(SOURCE_COLUMN, [spec.path] * n)
    return dataset.add_column(ROW_COLUMN, list(range(1, n + 1)))


def _first_char(file: Path) -> str:
    """The first non-whitespace character of a text file, or "" when it has none."""
    with open(file, encoding="utf-8") as f:
        while chunk := f.read(65536):
            stripped = chunk.lstrip()
            if stripped:
                return stripped[0]
    return ""


def _read_json(file: Path) -> list[dict[str, Any]]:
    """Parse a .json or .jsonl file with line-numbered errors; tag each row with its source."""
    try:
        first = _first_char(file)
        if not first:
            raise DataError(f"{file}: file is empty. Add rows, or remove it from the dataset.")
        if first == "[":
            with open(file, encoding="utf-8") as f:
                try:
                    data = json.load(f)
                except json.JSONDecodeError as err:
                    raise DataError(
                        f"{file}, line {err.lineno}: invalid JSON: {err.msg} (column {err.colno}). "
                        "Fix the JSON; a .json file holds one list of objects."
                    ) from None
            rows = list(enumerate(data, 1))
            unit = "row"
        else:
            rows = []
            unit = "line"
            with open(file, encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        rows.append((lineno, json.loads(line)))
                    except json.JSONDecodeError as err:
                        if not rows and first == "{":
                            _reject_single_object(file)
                        raise DataError(
                            f"{file}, line {lineno}: invalid JSON: {err.msg} (column {err.colno}). Fix the "
                            "line; JSON Lines holds one complete object per line (a .json file may also "
                            "hold one list of objects)."
                        ) from None
    except UnicodeDecodeError as err:
        raise DataError(f"{file}: not UTF-8 text ({err.reason}). Re-save the file as UTF-8.") from None
    if not rows:
        raise DataError(f"{file}: no rows (the list is empty). Add rows, or remove it from the dataset.")
    source = str(file)
    out = []
    for n, obj in rows:
        if not isinstance(obj, dict):
            raise DataError(
                f"{file}, {unit} {n}: expected a JSON object with named columns, got {type(obj).__name__}. "
                'Write each row as an object such as {"instruction": ..., "output": ...}.'
            )
        obj[SOURCE_COLUMN] = source
        obj[ROW_COLUMN] = n
        out.append(obj)
    return out


def _fingerprint(files: list[Path], spec: DatasetSpec) -> str:
    """Identify the files' current contents cheaply; without it `datasets` hashes every row."""
    digest = hashlib.sha256(repr(spec).encode())
    for file in files:
        stat = file.stat()
        digest.update(f"{file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:32]


def _reject_single_object(file: Path) -> None:
    """Name the common mistake of a pretty-printed single object instead of a list of rows."""
    try:
        with open(file, encoding="utf-8") as f:
            whole = json.load(f)
    except json.JSONDecodeError:
        return
    if isinstance(whole, dict):
        raise DataError(f"{file}: holds one JSON object, not rows. Wrap the rows in a list: [{{...}}, {{...}}].")


def _dataset_from_rows(rows: list[dict[str, Any]], fingerprint: str) -> datasets.Dataset:
    """Build a dataset column by column, keeping nested values exactly as they were written.

    Arrow would otherwise merge the keys of all objects in a column (so every tool's JSON schema
    gains the other tools' properties as nulls) and reject columns of mixed types.
    """
    names: dict[str, None] = {}
    for row in rows:
        for key in row:
            if key not in names:
                names[key] = None
    own = [name for name in names if name not in (SOURCE_COLUMN, ROW_COLUMN)]
    arrays = {name: _to_arrow([row.get(name) for row in rows]) for name in own}
    arrays[SOURCE_COLUMN] = pa.array([row[SOURCE_COLUMN] for row in rows], pa.string())
    arrays[ROW_COLUMN] = pa.array([row[ROW_COLUMN] for row in rows], pa.int64())
    return datasets.Dataset(pa.table(arrays), fingerprint=fingerprint)


def _to_arrow(values: list[Any]) -> pa.Array:
    if not any(isinstance(v, (list, dict)) for v in values):
        try:
            return pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            pass  # mixed scalar types: stored as JSON below, which keeps each value's own type
    text = pa.array([None if v is None else _ENCODER.encode(v) for v in values], pa.string())
    return text.cast(pa.json_())  # casting skips the per-value JSON check that pa.array(..., pa.json_()) does


def _with_location(table: pa.Table, file: Path, first_row: int = 1) -> pa.Table:
    if table.num_rows == 0:
        raise DataError(f"{file}: file has no rows. Add rows, or remove it from the dataset.")
    # Metadata written by `datasets` describes the file's columns only; drop it so ours are inferred.
    table = table.replace_schema_metadata(None)
    n = table.num_rows
    table = table.append_column(SOURCE_COLUMN, pa.array([str(file)] * n, pa.string()))
    return table.append_column(ROW_COLUMN, pa.array(range(first_row, first_row + n), pa.int64()))


def _read_parquet(file: Path) -> pa.Table:
    try:
        table = pq.read_table(file)
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(f"{file}: not a readable Parquet file: {err}. Re-export the file.") from None
    return _with_location(table, file)


def _read_csv(file: Path) -> pa.Table:
    try:
        with open(file, encoding="utf-8", newline="") as f:
            header = next(csv.reader(f), None)
    except UnicodeDecodeError as err:
        raise DataError(f"{file}: not UTF-8 text ({err.reason}). Re-save the file as UTF-8.") from None
    if not header:
        raise DataError(f"{file}: file is empty. Add a header line and rows, or remove it from the dataset.")
    # Read every column as text: type inference would turn an answer such as "42" into an integer.
    convert = pa_csv.ConvertOptions(column_types={name: pa.string() for name in header})
    try:
        table = pa_csv.read_csv(
            file, parse_options=pa_csv.ParseOptions(newlines_in_values=True), convert_options=convert
        )
    except pa.ArrowInvalid as err:
        raise DataError(f"{file}: invalid CSV: {err}. Fix the file (quote values that hold commas).") from None
    return _with_location(table, file)


def _read_txt(file: Path, column: str) -> pa.Table:
    texts: list[str] = []
    linenos: list[int] = []
    try:
        with open(file, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                line = line.rstrip("\n")
                if line.strip():
                    texts.append(line)
                    linenos.append(lineno)
    except UnicodeDecodeError as err:
        raise DataError(f"{file}: not UTF-8 text ({err.reason}). Re-save the file as UTF-8.") from None
    if not texts:
        raise DataError(f"{file}: file is empty. Add text, or remove it from the dataset.")
    table = pa.table({column: pa.array(texts, pa.string()), ROW_COLUMN: pa.array(linenos, pa.int64())})
    return table.add_column(1, SOURCE_COLUMN, pa.array([str(file)] * len(texts), pa.string()))


def iter_rows(dataset: datasets.Dataset, batch_size: int = 1000) -> Iterator[dict[str, Any]]:
    """Yield a dataset's rows as dicts, reading in batches (many times faster than ``for row in dataset``)."""
    for batch in dataset.iter(batch_size=batch_size):
        names = list(batch)
        for values in zip(*batch.values()):
            yield dict(zip(names, values))


def data_files(spec: DatasetSpec) -> list[Path]:
    """The local files :func:`load_rows` reads for ``spec`` (empty for a Hub dataset)."""
    return [] if spec.from_hub else _data_files(Path(spec.path), spec.path)
