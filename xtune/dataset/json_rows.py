"""JSON and JSON Lines files -> raw rows on disk, read and written a part at a time.

Reading a large .json list whole (``json.load``) holds every row as Python objects, and a dataset built from
them in memory is copied into every tokenizer worker: memory grows with the dataset. Here a file is parsed
one object at a time (:func:`iter_json_rows`: an incremental parser over a sliding buffer for lists, line by
line for JSON Lines) and rows are written to Arrow files of :data:`ROWS_PER_PART` rows, which ``datasets``
memory-maps (workers map the same pages instead of receiving copies).

Columns keep the rules of an in-memory read: the file's columns in first-seen order, values exactly as
written (lists, objects and columns of mixed types are stored as JSON). A column is typed per part; when
parts disagree (a column of strings in one part, objects in another) the parts are rewritten with that
column as JSON, and a column missing from a part is filled with nulls.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa

from xtune.errors import DataError

ROWS_PER_PART = 10_000
_CHUNK = 1 << 20
_WHITESPACE = " \t\n\r"
_DECODER = json.JSONDecoder()
_ENCODER = json.JSONEncoder(ensure_ascii=False)


def _invalid(file: Path, line: int, message: str, fix: str) -> DataError:
    return DataError(f"{file}, line {line}: invalid JSON: {message}. {fix}")


class _ListReader:
    """Objects of a JSON list, parsed one at a time from a buffer that holds only what is not yet parsed."""

    FIX = "Fix the JSON; a .json file holds one list of objects."

    def __init__(self, file: Path, handle) -> None:
        self.file, self.handle = file, handle
        self.buf, self.pos, self.eof = "", 0, False
        self.line_base = 1  # the line number of self.buf[0]

    def _more(self) -> bool:
        if self.eof:
            return False
        chunk = self.handle.read(_CHUNK)
        if not chunk:
            self.eof = True
            return False
        self.line_base += self.buf.count("\n", 0, self.pos)
        self.buf, self.pos = self.buf[self.pos :] + chunk, 0
        return True

    def _line(self, pos: int) -> int:
        return self.line_base + self.buf.count("\n", 0, pos)

    def _column(self, pos: int) -> int:
        return pos - self.buf.rfind("\n", 0, pos)

    def _skip_space(self) -> str:
        """The next non-whitespace character ("" at the end of the file), left unconsumed."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in _WHITESPACE:
                self.pos += 1
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._more():
                return ""

    def _fail(self, message: str, pos: int | None = None) -> DataError:
        pos = self.pos if pos is None else pos
        return _invalid(self.file, self._line(pos), f"{message} (column {self._column(pos)})", self.FIX)

    def _value(self) -> Any:
        while True:
            try:
                value, end = _DECODER.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as err:
                if self._more():
                    continue  # the value may go on in the next chunk
                raise self._fail(err.msg, err.pos) from None
            if end == len(self.buf) and self._more():
                continue  # a number or literal cut at the chunk's end: decode it whole
            self.pos = end
            return value

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        self._skip_space()
        self.pos += 1  # the opening "[" (checked by the caller)
        if self._skip_space() == "]":
            self.pos += 1
        else:
            index = 0
            while True:
                if self._skip_space() == "":
                    raise self._fail("Expecting value")
                value = self._value()
                index += 1
                yield index, value
                following = self._skip_space()
                self.pos += 1
                if following == "]":
                    break
                if following != ",":
                    raise self._fail("Expecting ',' delimiter", self.pos - 1)
        if self._skip_space() != "":
            raise self._fail("Extra data")


def iter_json_rows(file: Path, first: str) -> Iterator[tuple[int, Any, str]]:
    """``(row number, value, unit)`` for each row of a .json list or JSON Lines file.

    Args:
        file: The file.
        first: Its first non-whitespace character (``[`` for a list).

    Raises:
        DataError: Invalid JSON, naming the file, line and column.
    """
    with open(file, encoding="utf-8") as handle:
        if first == "[":
            for index, value in _ListReader(file, handle):
                yield index, value, "row"
            return
        seen = False
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                if not seen and first == "{":
                    _reject_single_object(file)
                raise _invalid(
                    file,
                    lineno,
                    f"{err.msg} (column {err.colno})",
                    "Fix the line; JSON Lines holds one complete object per line (a .json file may also hold "
                    "one list of objects)",
                ) from None
            seen = True
            yield lineno, value, "line"


def _reject_single_object(file: Path) -> None:
    """Name the common mistake of a pretty-printed single object instead of a list of rows."""
    try:
        with open(file, encoding="utf-8") as f:
            whole = json.load(f)
    except json.JSONDecodeError:
        return
    if isinstance(whole, dict):
        raise DataError(f"{file}: holds one JSON object, not rows. Wrap the rows in a list: [{{...}}, {{...}}].")


def to_arrow(values: list[Any], as_json: bool = False) -> pa.Array:
    """One column's values as Arrow: scalars of one type as that type; lists, objects, mixed types as JSON."""
    if not as_json and not any(isinstance(v, (list, dict)) for v in values):
        try:
            return pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            pass  # mixed scalar types: stored as JSON below, which keeps each value's own type
    text = pa.array([None if v is None else _ENCODER.encode(v) for v in values], pa.string())
    return text.cast(pa.json_())  # casting skips the per-value JSON check that pa.array(..., pa.json_()) does


class RowWriter:
    """Rows -> Arrow files of :data:`ROWS_PER_PART` rows in ``folder`` -> one memory-mapped dataset."""

    def __init__(self, folder: Path, meta: tuple[str, ...]) -> None:
        self.folder, self.meta = folder, meta
        self.names: dict[str, None] = {}  # the file's own columns, first-seen order
        self.rows: list[dict[str, Any]] = []
        self.parts: list[Path] = []
        self.count = 0

    def add(self, row: dict[str, Any]) -> None:
        for key in row:
            if key not in self.names and key not in self.meta:
                self.names[key] = None
        self.rows.append(row)
        self.count += 1
        if len(self.rows) >= ROWS_PER_PART:
            self._flush()

    def _flush(self) -> None:
        if not self.rows:
            return
        names = [name for name in self.names if any(name in row for row in self.rows)]
        arrays = {name: to_arrow([row.get(name) for row in self.rows]) for name in names}
        for name in self.meta:
            arrays[name] = pa.array([row[name] for row in self.rows])
        path = self.folder / f"part-{len(self.parts):05d}.arrow"
        _write(pa.table(arrays), path)
        self.parts.append(path)
        self.rows = []

    def finish(self, fingerprint: str) -> datasets.Dataset:
        """The written rows as one dataset, columns unified over the parts (see the module docstring)."""
        self._flush()
        tables = [_read(path) for path in self.parts]
        own = list(self.names)
        types: dict[str, set] = {name: set() for name in own}
        for table in tables:
            for name in own:
                if name in table.column_names and not pa.types.is_null(table.schema.field(name).type):
                    types[name].add(table.schema.field(name).type)
        as_json = {name for name, found in types.items() if len(found) > 1}
        target = {
            name: (pa.json_() if name in as_json else next(iter(found), pa.null())) for name, found in types.items()
        }
        parts = []
        for path, table in zip(self.parts, tables):
            if table.column_names != own + list(self.meta) or any(
                table.schema.field(name).type != target[name] for name in own
            ):
                table = _conform(table, own, target, as_json, self.meta)
                _write(table, path.with_suffix(".fixed"))
                del table
                path.with_suffix(".fixed").replace(path)
            parts.append(datasets.Dataset.from_file(str(path)))
        del tables
        dataset = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
        dataset._fingerprint = fingerprint  # identifies the files cheaply: datasets would hash every row
        return dataset


def _conform(table: pa.Table, own: list[str], target: dict, as_json: set, meta: tuple[str, ...]) -> pa.Table:
    columns = {}
    for name in own:
        if name not in table.column_names:
            columns[name] = pa.nulls(table.num_rows, target[name])
        elif name in as_json and table.schema.field(name).type != pa.json_():
            columns[name] = to_arrow(table.column(name).to_pylist(), as_json=True)
        else:
            columns[name] = table.column(name).cast(target[name])
    for name in meta:
        columns[name] = table.column(name)
    return pa.table(columns)


def _write(table: pa.Table, path: Path) -> None:
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)


def _read(path: Path) -> pa.Table:
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_stream(source).read_all()
