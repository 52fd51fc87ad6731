"""Read a dataset's raw rows (see :mod:`xtune.dataset.dataset_info` for how a dataset is named).

:func:`load_rows` returns the file's own columns unchanged plus ``_source`` (the file) and ``_row``
(1-based: the line number for .jsonl and .txt, the row number otherwise) so that
:mod:`xtune.dataset.formats` can say exactly which row is wrong.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import shutil
import tempfile
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from datasets.exceptions import DatasetNotFoundError

from xtune.dataset.dataset_info import DatasetSpec, list_data_files
from xtune.dataset.json_rows import RowWriter, iter_json_rows
from xtune.errors import DataError

SOURCE_COLUMN = "_source"
ROW_COLUMN = "_row"


def load_rows(spec: DatasetSpec, work_dir: Path | None = None) -> datasets.Dataset:
    """Read a dataset's raw rows.

    A .json file holds one JSON list of objects (JSON Lines content is accepted too); .jsonl holds one
    object per line. A .txt file holds one document per line, as ``datasets``' text loader reads it
    (put multi-line documents in a .jsonl ``text`` column instead); blank lines are skipped. CSV values
    are all read as strings; ``_row`` 1 is the first row after the header. A folder is read as all its
    data files (recursively, in sorted order). JSON rows are streamed to Arrow files in a folder made under
    ``work_dir`` (the system's temporary folder when None, removed with the returned dataset), so memory does
    not grow with the file.

    Returns:
        A dataset with the file's columns (in first-seen order) plus ``_source`` and ``_row``. Columns
        holding lists, objects or mixed types are stored as JSON so rows come back exactly as written.

    Raises:
        DataError: A missing, empty, unreadable or invalid file, naming the file and line.
    """
    if spec.from_hub:
        return _load_hub(spec)
    files = _local_files(spec)
    fingerprint = _fingerprint(files, spec)
    suffix = files[0].suffix.lower()
    if suffix in (".json", ".jsonl"):
        return _json_dataset(files, fingerprint, work_dir)
    if suffix == ".parquet":
        tables = [_read_parquet(file) for file in files]
    elif suffix == ".csv":
        tables = [_read_csv(file) for file in files]
    else:
        tables = [_read_txt(file, spec.columns.get("text", "text")) for file in files]
    table = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
    own = [name for name in table.column_names if name not in (SOURCE_COLUMN, ROW_COLUMN)]
    return datasets.Dataset(table.select(own + [SOURCE_COLUMN, ROW_COLUMN]), fingerprint=fingerprint)


def first_row(spec: DatasetSpec) -> dict[str, Any]:
    """The first row of a dataset, reading no further than that row (a data format guessed from it).

    Local files are read as :func:`load_rows` reads them, and fail with the same errors for a missing path,
    an empty or unreadable file, an empty list or invalid JSON before the first row ends; problems later in
    the file are found when the rows are loaded.

    Returns:
        The row's own columns (for JSON: the keys it has, not the ones only later rows add) plus
        ``_source`` and ``_row``.

    Raises:
        DataError: As :func:`load_rows`, for the first file of ``spec``.
    """
    if spec.from_hub:
        # The Hub's own cache keeps the download: loading all rows again later costs no second download.
        return _load_hub(spec)[0]
    file = _local_files(spec)[0]
    suffix = file.suffix.lower()
    if suffix in (".json", ".jsonl"):
        objects = _json_objects(file)
        try:
            row = next(objects)
        finally:
            objects.close()  # closes the file: the rest is not parsed
    elif suffix == ".parquet":
        row = _first_parquet_row(file)
    elif suffix == ".csv":
        row = _first_csv_row(file)
    else:
        row = _read_txt(file, spec.columns.get("text", "text"), limit=1).to_pylist()[0]
    return row


class ParsedRows:
    """Each dataset's raw rows parsed once while a dataset is built, for every step that reads them.

    The key of image-text data reads each row's image paths, and processing on a cache miss reads the rows
    again: both get the one :func:`load_rows` result from :meth:`get`. JSON rows are streamed to Arrow parts
    (memory-mapped, so memory stays flat) in a folder made under ``work_dir`` on the first :meth:`get`;
    :meth:`release` removes one dataset's parts, :meth:`close` (or leaving the ``with`` block) all of them.

    Args:
        work_dir: Where the folder is made (None: the system's temporary folder).
        suffix: The end of the folder's name (a build folder's suffix, so a killed run's folder is found).
    """

    def __init__(self, work_dir: Path | None = None, suffix: str = "") -> None:
        self.work_dir, self.suffix = work_dir, suffix
        self._folder: Path | None = None
        self._rows: dict[str, tuple[datasets.Dataset, Path]] = {}

    def get(self, spec: DatasetSpec) -> datasets.Dataset:
        """The raw rows of ``spec`` (:func:`load_rows`), parsed on the first call only."""
        key = repr(spec)
        if key not in self._rows:
            if self._folder is None:
                if self.work_dir is not None:
                    self.work_dir.mkdir(parents=True, exist_ok=True)
                self._folder = Path(tempfile.mkdtemp(prefix="raw-rows-", suffix=self.suffix, dir=self.work_dir))
            folder = Path(tempfile.mkdtemp(dir=self._folder))
            self._rows[key] = (load_rows(spec, work_dir=folder), folder)
        return self._rows[key][0]

    def release(self, spec: DatasetSpec) -> None:
        """Remove the parsed rows of ``spec`` (a later :meth:`get` parses again)."""
        found = self._rows.pop(repr(spec), None)
        if found is not None:
            shutil.rmtree(found[1], ignore_errors=True)

    def close(self) -> None:
        self._rows.clear()
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def __enter__(self) -> ParsedRows:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _local_files(spec: DatasetSpec) -> list[Path]:
    """The data files of a local ``spec``, checked to exist and to suit its format."""
    path = Path(spec.path)
    if not path.exists():
        registered = f" (dataset '{spec.name}')" if spec.name != spec.path else ""
        raise DataError(f"{spec.path}{registered}: no such file or folder. Check the path.")
    files = list_data_files(path, spec.path)
    if files[0].suffix.lower() == ".txt" and spec.data_format != "text":
        raise DataError(
            f"{spec.path}: .txt files hold plain text, which only the 'text' format reads "
            f"(got '{spec.data_format}'). Use data_format='text'."
        )
    return files


def _load_hub(spec: DatasetSpec) -> datasets.Dataset:
    try:
        dataset = datasets.load_dataset(spec.path, name=spec.subset, data_dir=spec.folder, split=spec.split)
    except (DatasetNotFoundError, OSError, ValueError) as err:
        raise DataError(
            f"could not load dataset {spec.path!r} ({_hub_part(spec)}) from the Hugging Face Hub, and no "
            f"local file or folder has that name: {err}. Check the name, or give a local path."
        ) from err
    n = len(dataset)
    dataset = dataset.add_column(SOURCE_COLUMN, [spec.path] * n)
    return dataset.add_column(ROW_COLUMN, list(range(1, n + 1)))


def _hub_part(spec: DatasetSpec) -> str:
    parts = [f"split {spec.split!r}"]
    parts += [f"subset {spec.subset!r}"] if spec.subset else []
    parts += [f"folder {spec.folder!r}"] if spec.folder else []
    return ", ".join(parts)


def _first_char(file: Path) -> str:
    """The first non-whitespace character of a text file, or "" when it has none."""
    with open(file, encoding="utf-8") as f:
        while chunk := f.read(65536):
            stripped = chunk.lstrip()
            if stripped:
                return stripped[0]
    return ""


def _fingerprint(files: list[Path], spec: DatasetSpec) -> str:
    """Identify the files' current contents cheaply; without it `datasets` hashes every row."""
    digest = hashlib.sha256(repr(spec).encode())
    for file in files:
        stat = file.stat()
        digest.update(f"{file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:32]


def _json_dataset(files: list[Path], fingerprint: str, work_dir: Path | None) -> datasets.Dataset:
    """The rows of .json/.jsonl files, streamed to Arrow files in a folder under ``work_dir`` (see
    :mod:`xtune.dataset.json_rows`); without ``work_dir`` the folder is removed with the dataset."""
    folder = Path(tempfile.mkdtemp(prefix="xtune-rows-", dir=work_dir))
    try:
        writer = RowWriter(folder, (SOURCE_COLUMN, ROW_COLUMN))
        for file in files:
            for obj in _json_objects(file):
                writer.add(obj)
        dataset = writer.finish(fingerprint)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    if work_dir is None:
        weakref.finalize(dataset, shutil.rmtree, folder, True)
    return dataset


def _json_objects(file: Path) -> Iterator[dict[str, Any]]:
    """The rows of one .json/.jsonl file, parsed one at a time, with ``_source`` and ``_row``."""
    count = 0
    try:
        first = _first_char(file)
        if not first:
            raise DataError(f"{file}: file is empty. Add rows, or remove it from the dataset.")
        for n, obj, unit in iter_json_rows(file, first):
            if not isinstance(obj, dict):
                raise DataError(
                    f"{file}, {unit} {n}: expected a JSON object with named columns, got "
                    f"{type(obj).__name__}. Write each row as an object such as "
                    '{"instruction": ..., "output": ...}.'
                )
            obj[SOURCE_COLUMN] = str(file)
            obj[ROW_COLUMN] = n
            count += 1
            yield obj
    except UnicodeDecodeError as err:
        raise DataError(f"{file}: not UTF-8 text ({err.reason}). Re-save the file as UTF-8.") from None
    if not count:
        raise DataError(f"{file}: no rows (the list is empty). Add rows, or remove it from the dataset.")


def _with_location(table: pa.Table, file: Path, start: int = 1) -> pa.Table:
    if table.num_rows == 0:
        raise DataError(f"{file}: file has no rows. Add rows, or remove it from the dataset.")
    # Metadata written by `datasets` describes the file's columns only; drop it so ours are inferred.
    table = table.replace_schema_metadata(None)
    n = table.num_rows
    table = table.append_column(SOURCE_COLUMN, pa.array([str(file)] * n, pa.string()))
    return table.append_column(ROW_COLUMN, pa.array(range(start, start + n), pa.int64()))


def _first_of(batch: pa.RecordBatch | None, schema: pa.Schema, file: Path) -> dict[str, Any]:
    """The first row of a file read batch by batch (no batch: an empty file, whose error names it)."""
    table = pa.Table.from_batches([batch]) if batch is not None else schema.empty_table()
    return _with_location(table.slice(0, 1), file).to_pylist()[0]


def _parquet_error(file: Path, err: Exception) -> DataError:
    return DataError(f"{file}: not a readable Parquet file: {str(err).rstrip('.')}. Re-export the file.")


def _read_parquet(file: Path) -> pa.Table:
    try:
        # ParquetFile, as the first-row reader uses: the same errors
        with pq.ParquetFile(file) as parquet:
            table = parquet.read()
    except (pa.ArrowInvalid, OSError) as err:
        raise _parquet_error(file, err) from None
    return _with_location(table, file)


def _first_parquet_row(file: Path) -> dict[str, Any]:
    try:
        with pq.ParquetFile(file) as parquet:
            batch, schema = next(parquet.iter_batches(batch_size=1), None), parquet.schema_arrow
    except (pa.ArrowInvalid, OSError) as err:
        raise _parquet_error(file, err) from None
    return _first_of(batch, schema, file)


def _csv_options(file: Path) -> dict[str, Any]:
    """pyarrow's CSV options for ``file``, its header checked."""
    try:
        with open(file, encoding="utf-8", newline="") as f:
            header = next(csv.reader(f), None)
    except UnicodeDecodeError as err:
        raise DataError(f"{file}: not UTF-8 text ({err.reason}). Re-save the file as UTF-8.") from None
    if not header:
        raise DataError(f"{file}: file is empty. Add a header line and rows, or remove it from the dataset.")
    # Read every column as text: type inference would turn an answer such as "42" into an integer.
    return {
        "parse_options": pa_csv.ParseOptions(newlines_in_values=True),
        "convert_options": pa_csv.ConvertOptions(column_types={name: pa.string() for name in header}),
    }


def _csv_error(file: Path, err: Exception) -> DataError:
    return DataError(f"{file}: invalid CSV: {err}. Fix the file (quote values that hold commas).")


def _read_csv(file: Path) -> pa.Table:
    options = _csv_options(file)
    try:
        table = pa_csv.read_csv(file, **options)
    except pa.ArrowInvalid as err:
        raise _csv_error(file, err) from None
    return _with_location(table, file)


def _first_csv_row(file: Path) -> dict[str, Any]:
    options = _csv_options(file)
    try:
        with pa_csv.open_csv(file, **options) as reader:  # reads a block at a time, not the file
            batch, schema = next(iter(reader), None), reader.schema
    except pa.ArrowInvalid as err:
        raise _csv_error(file, err) from None
    return _first_of(batch, schema, file)


def _text_lines(file: Path) -> Iterator[tuple[int, str]]:
    """(line number, line) for each non-blank line of a text file."""
    try:
        with open(file, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                line = line.rstrip("\n")
                if line.strip():
                    yield lineno, line
    except UnicodeDecodeError as err:
        raise DataError(f"{file}: not UTF-8 text ({err.reason}). Re-save the file as UTF-8.") from None


def _read_txt(file: Path, column: str, limit: int | None = None) -> pa.Table:
    lines = list(itertools.islice(_text_lines(file), limit))
    if not lines:
        raise DataError(f"{file}: file is empty. Add text, or remove it from the dataset.")
    linenos, texts = zip(*lines)
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
    return [] if spec.from_hub else list_data_files(Path(spec.path), spec.path)
