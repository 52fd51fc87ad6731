"""first_row: a dataset's first row without reading the rest, with load_rows' errors."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from xtune.dataset.dataset_info import resolve_dataset
from xtune.dataset.loading import first_row, load_rows
from xtune.errors import DataError

ROWS = [
    {"instruction": "Add 1 and 2, then 3.", "output": "42"},
    {"instruction": "Spell cat.", "output": "tac"},
]


def spec(path: Path):
    return resolve_dataset(str(path), "text" if path.suffix == ".txt" else "alpaca")


def write(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".json":
        path.write_text(json.dumps(rows, indent=2))
    elif path.suffix == ".jsonl":
        path.write_text("\n\n" + "\n".join(json.dumps(row) for row in rows) + "\n")
    elif path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=1)
    elif path.suffix == ".csv":
        path.write_text("instruction,output\n" + "".join(f'"{r["instruction"]}",{r["output"]}\n' for r in rows))
    else:
        path.write_text("\n \n" + "".join(f"{r['instruction']}\n" for r in rows))
    return path


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".parquet", ".csv", ".txt"])
def test_first_row_is_load_rows_first_row(tmp_path, suffix):
    file = write(tmp_path / f"data{suffix}", ROWS)
    row = first_row(spec(file))
    assert row == load_rows(spec(file))[0]
    assert row["_source"] == str(file) and row["_row"] == {".jsonl": 3, ".txt": 3}.get(suffix, 1)
    assert row[("text" if suffix == ".txt" else "instruction")] == "Add 1 and 2, then 3."


def test_a_folder_gives_its_first_files_first_row(tmp_path):
    write(tmp_path / "b.jsonl", ROWS[1:])
    write(tmp_path / "a.jsonl", ROWS[:1])
    assert first_row(spec(tmp_path))["instruction"] == ROWS[0]["instruction"]


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_json_reading_stops_after_the_first_row(tmp_path, suffix):
    """The rest of the file is never parsed: a broken second row does not matter to first_row (load_rows
    finds it)."""
    file = write(tmp_path / f"data{suffix}", ROWS[:1])
    text = file.read_text()
    file.write_text(text.rstrip().rstrip("]") + (',\n{"broken": }]' if suffix == ".json" else '\n{"broken": }\n'))
    assert first_row(spec(file))["output"] == "42"
    with pytest.raises(DataError, match="line"):
        load_rows(spec(file))


def _empty_parquet(path: Path) -> None:
    pq.write_table(pa.Table.from_pylist([], schema=pa.schema([("instruction", pa.string())])), path)


BAD = {
    "empty.json": "",
    "empty_list.json": " [ ] ",
    "not_objects.json": "[1, 2]",
    "invalid.json": '[{"instruction": "a",}]',
    "one_object.json": '{"instruction": "a",\n "output": "b"}',
    "blank.jsonl": "\n\n",
    "invalid.jsonl": '{"instruction": "a"\n',
    "not_utf8.jsonl": b'{"instruction": "\xff"}\n',
    "empty.csv": "",
    "header_only.csv": "instruction,output\n",
    "invalid.csv": "instruction,output\na,b,c\n",
    "empty.parquet": "",
    "invalid.parquet": "not parquet",
    "no_rows.parquet": _empty_parquet,
    "blank.txt": "\n  \n",
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_files_give_load_rows_errors(tmp_path, name):
    file = tmp_path / name
    content = BAD[name]
    if callable(content):
        content(file)
    elif isinstance(content, bytes):
        file.write_bytes(content)
    else:
        file.write_text(content)
    with pytest.raises(DataError) as first:
        first_row(spec(file))
    with pytest.raises(DataError) as whole:
        load_rows(spec(file))
    assert str(first.value) == str(whole.value)
    assert str(file) in str(first.value)


def test_missing_path_and_wrong_format_give_load_rows_errors(tmp_path):
    text = write(tmp_path / "a.txt", ROWS)
    missing = spec(text)
    text.unlink()
    for bad in (missing, resolve_dataset(str(write(tmp_path / "b.txt", ROWS)), "alpaca")):
        with pytest.raises(DataError) as first:
            first_row(bad)
        with pytest.raises(DataError) as whole:
            load_rows(bad)
        assert str(first.value) == str(whole.value)
