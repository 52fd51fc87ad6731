"""Reading raw rows from every file type, folders and registries, with errors that name file and line."""

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from xtune import paths
from xtune.dataset.dataset_info import MEDIA_COLUMNS, DatasetSpec, load_dataset_info, resolve_dataset
from xtune.dataset.formats import convert_rows
from xtune.dataset.loading import load_rows
from xtune.errors import ConfigError, DataError

ALPACA = [
    {"instruction": "Add 1 and 2.", "input": "", "output": "3"},
    {"instruction": "Spell cat.", "input": "backwards", "output": "tac"},
]


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list, blank_line_after: int | None = None) -> Path:
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    if blank_line_after is not None:
        lines.insert(blank_line_after, "")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def load(path: Path, data_format: str = "alpaca", **kwargs):
    return load_rows(resolve_dataset(str(path), data_format, **kwargs))


def load_error(path: Path, data_format: str = "alpaca") -> str:
    with pytest.raises(DataError) as info:
        load(path, data_format)
    assert str(path) in str(info.value)
    return str(info.value)


# ----------------------------------------------------------------------------- file types


def test_json_keeps_columns_in_file_order_and_adds_location(tmp_path):
    file = write_json(tmp_path / "a.json", [{"output": "o", "instruction": "i"}, {"extra": 1, "output": "p"}])
    ds = load(file)
    assert ds.column_names == ["output", "instruction", "extra", "_source", "_row"]
    assert ds.to_list() == [
        {"output": "o", "instruction": "i", "extra": None, "_source": str(file), "_row": 1},
        {"output": "p", "instruction": None, "extra": 1, "_source": str(file), "_row": 2},
    ]


def test_jsonl_rows_are_numbered_by_line(tmp_path):
    file = write_jsonl(tmp_path / "a.jsonl", ALPACA, blank_line_after=1)
    ds = load(file)
    assert ds["_row"] == [1, 3]
    assert ds["instruction"] == ["Add 1 and 2.", "Spell cat."]


def test_json_file_holding_json_lines_is_accepted(tmp_path):
    file = write_jsonl(tmp_path / "a.json", ALPACA)
    assert load(file)["output"] == ["3", "tac"]


def test_nested_values_come_back_exactly_as_written(tmp_path):
    # Arrow would merge all tools' keys into one struct (adding null properties) and reject mixed types.
    tools_a = [{"name": "f", "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}}}]
    tools_b = json.dumps([{"name": "g", "parameters": {"type": "object", "properties": {"y": {"enum": [1]}}}}])
    rows = [
        {"conversations": [{"from": "human", "value": "q"}], "tools": tools_a, "score": 1},
        {"conversations": [{"from": "human", "value": "q", "weight": 0}], "tools": tools_b, "score": "high"},
    ]
    ds = load(write_jsonl(tmp_path / "a.jsonl", rows), "sharegpt")
    assert [{k: r[k] for k in ("conversations", "tools", "score")} for r in ds] == rows


def test_csv_reads_every_value_as_text(tmp_path):
    file = tmp_path / "a.csv"
    with open(file, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["instruction", "input", "output"])
        writer.writerow(["What is 6 times 7?", "", "42"])
        writer.writerow(["Write two lines.", "", "one,\ntwo"])
    ds = load(file)
    assert ds.to_list()[0] == {
        "instruction": "What is 6 times 7?",
        "input": "",
        "output": "42",
        "_source": str(file),
        "_row": 1,
    }
    assert ds["output"][1] == "one,\ntwo"


def test_parquet(tmp_path):
    file = tmp_path / "a.parquet"
    pq.write_table(pa.Table.from_pylist(ALPACA), file)
    ds = load(file)
    assert ds.column_names == ["instruction", "input", "output", "_source", "_row"]
    assert ds["_row"] == [1, 2] and ds["output"] == ["3", "tac"]


def test_txt_is_one_document_per_line(tmp_path):
    file = tmp_path / "corpus.txt"
    file.write_text("First document.\n\nSecond document.\nThird.\n", encoding="utf-8")
    spec = resolve_dataset(str(file))
    assert spec.data_format == "text"
    ds = load_rows(spec)
    assert ds["text"] == ["First document.", "Second document.", "Third."]
    assert ds["_row"] == [1, 3, 4]


def test_folder_reads_sorted_files(tmp_path):
    write_jsonl(tmp_path / "part-2.jsonl", ALPACA[1:])
    write_jsonl(tmp_path / "part-1.jsonl", ALPACA[:1])
    (tmp_path / "README.md").write_text("not data")
    ds = load(tmp_path)
    assert ds["output"] == ["3", "tac"]
    assert [Path(s).name for s in ds["_source"]] == ["part-1.jsonl", "part-2.jsonl"]
    assert ds["_row"] == [1, 1]


def test_folder_of_parquet_files(tmp_path):
    pq.write_table(pa.Table.from_pylist(ALPACA[:1]), tmp_path / "0.parquet")
    pq.write_table(pa.Table.from_pylist(ALPACA[1:]), tmp_path / "1.parquet")
    assert load(tmp_path)["instruction"] == ["Add 1 and 2.", "Spell cat."]


def test_fifty_thousand_rows_load_and_convert_in_order(tmp_path):
    # Speed is measured by tools/bench_data.py, not here; this checks that a large file loads whole and in order.
    rows = [{"instruction": f"Question {i}?", "input": "", "output": f"Answer {i}." * 10} for i in range(50_000)]
    file = write_jsonl(tmp_path / "big.jsonl", rows)
    spec = resolve_dataset(str(file))
    samples, skipped = convert_rows(load_rows(spec), spec)
    assert len(samples) == 50_000 and not skipped
    assert samples[-1]["messages"][0]["content"] == "Question 49999?"


# ----------------------------------------------------------------------------- bad files


def test_invalid_json_names_the_line(tmp_path):
    file = tmp_path / "a.json"
    file.write_text('[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "c" "output": "d"}\n]')
    assert "a.json, line 3: invalid JSON: Expecting ',' delimiter" in load_error(file)


def test_invalid_jsonl_names_the_line(tmp_path):
    file = tmp_path / "a.jsonl"
    file.write_text('{"instruction": "a", "output": "b"}\n\n{"instruction": "c", "output": }\n')
    assert "a.jsonl, line 3: invalid JSON: Expecting value" in load_error(file)


def test_single_object_instead_of_a_list(tmp_path):
    assert "holds one JSON object, not rows" in load_error(write_json(tmp_path / "a.json", ALPACA[0]))


def test_row_that_is_not_an_object(tmp_path):
    assert "row 2: expected a JSON object" in load_error(write_json(tmp_path / "a.json", [ALPACA[0], "text"]))
    assert "line 2: expected a JSON object" in load_error(write_jsonl(tmp_path / "a.jsonl", [ALPACA[0], [1]]))


@pytest.mark.parametrize(
    "name,content",
    [
        ("a.json", ""),
        ("b.json", "[]"),
        ("c.jsonl", "\n\n"),
        ("d.csv", ""),
        ("e.csv", "instruction,output\n"),
        ("f.txt", "\n"),
    ],
)
def test_empty_files(tmp_path, name, content):
    file = tmp_path / name
    file.write_text(content)
    message = load_error(file, "text" if name.endswith(".txt") else "alpaca")
    assert "empty" in message or "no rows" in message


def test_empty_parquet(tmp_path):
    file = tmp_path / "a.parquet"
    pq.write_table(pa.table({"instruction": pa.array([], pa.string())}), file)
    assert "no rows" in load_error(file)


def test_missing_file(tmp_path):
    spec = DatasetSpec("mine", str(tmp_path / "gone.json"), "alpaca", {}, {})
    with pytest.raises(DataError, match=r"gone.json \(dataset 'mine'\): no such file"):
        load_rows(spec)


def test_not_utf8(tmp_path):
    file = tmp_path / "a.jsonl"
    file.write_bytes('{"instruction": "caf\u00e9"}\n'.encode("latin-1"))
    assert "not UTF-8" in load_error(file)


def test_txt_needs_text_format(tmp_path):
    file = tmp_path / "a.txt"
    file.write_text("hello\n")
    assert "use data_format='text'" in load_error(file, "alpaca").lower()


def test_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    assert "no data files" in load_error(tmp_path / "empty")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    write_json(mixed / "a.json", ALPACA)
    (mixed / "b.csv").write_text("instruction,output\na,b\n")
    assert "mixes file types" in load_error(mixed)


# ----------------------------------------------------------------------------- registry and resolution


def test_shipped_registry_resolves_every_entry():
    info = load_dataset_info()
    assert {"identity", "alpaca_demo", "sharegpt_demo", "openai_demo", "pretrain_demo", "alpaca"} <= set(info)
    assert info["alpaca"]["hf_hub_url"] == "tatsu-lab/alpaca"
    for name in info:
        spec = resolve_dataset(name)
        assert spec.from_hub == ("hf_hub_url" in info[name])


def test_shipped_local_datasets_convert_without_bad_rows():
    # Like litgpt's config-hub test: every shipped file must load and convert cleanly.
    for name, entry in load_dataset_info().items():
        if "file_name" not in entry:
            continue  # Hub datasets are never downloaded in tests
        spec = resolve_dataset(name)
        assert Path(spec.path).parent == paths.DATASET_INFO.parent
        uses = tuple(media for media in MEDIA_COLUMNS if media in spec.columns)  # read by the vision dataset
        samples, skipped = convert_rows(load_rows(spec), spec, skip_bad_rows=True, uses=uses)
        assert samples and not skipped, (name, skipped[:3])


def test_user_registry_resolves_paths_relative_to_itself(tmp_path):
    data_dir = tmp_path / "mydata"
    data_dir.mkdir()
    write_json(data_dir / "qa.json", [{"q": "Capital of Italy?", "a": "Rome"}])
    registry = write_json(
        data_dir / "dataset_info.json",
        {
            "qa": {"file_name": "qa.json", "columns": {"prompt": "q", "response": "a"}},  # LLaMA-Factory keys
            "chat": {"file_name": "chat.jsonl", "formatting": "sharegpt", "tags": {"user_tag": "user"}},
            "prefs": {"file_name": "p.json", "formatting": "sharegpt", "ranking": True},
            "hub": {"hf_hub_url": "owner/name", "split": "test"},
        },
    )
    spec = resolve_dataset("qa", dataset_info=str(registry))
    assert spec == DatasetSpec("qa", str(data_dir / "qa.json"), "alpaca", {"instruction": "q", "output": "a"}, {})
    samples, _ = convert_rows(load_rows(spec), spec)
    assert samples[0]["messages"][1] == {"role": "assistant", "content": "Rome"}
    assert resolve_dataset("prefs", dataset_info=str(registry)).data_format == "preference"
    hub = resolve_dataset("hub", dataset_info=str(registry))
    assert (hub.path, hub.split, hub.from_hub) == ("owner/name", "test", True)
    # Explicit arguments override the registry's (and merge with its columns and tags).
    chat = resolve_dataset(
        "chat", "openai", columns={"messages": "turns"}, tags={"role_tag": "r"}, dataset_info=str(registry)
    )
    assert (chat.data_format, chat.columns, chat.tags) == (
        "openai",
        {"messages": "turns"},
        {"user_tag": "user", "role_tag": "r"},
    )


def test_registry_with_bad_json_names_file_and_line(tmp_path):
    registry = tmp_path / "dataset_info.json"
    registry.write_text('{\n  "a": {"file_name": "a.json"},\n  "b": {"file_name": "b.json"\n}')
    with pytest.raises(ConfigError, match=r"dataset_info.json: invalid JSON at line 4"):
        load_dataset_info(str(registry))


@pytest.mark.parametrize(
    "entry,fragment",
    [
        ({"file_name": "a.json", "fromatting": "alpaca"}, "unknown key(s) ['fromatting']"),
        ({"file_name": "a.json", "formatting": "chatml"}, "unknown data format 'chatml'"),
        ({"formatting": "alpaca"}, "no source: give 'file_name'"),
        ({"file_name": "a.json", "columns": {"question": "q"}}, "unknown key(s) ['question']"),
        ({"file_name": "a.json", "tags": {"user": "me"}}, "unknown key(s) ['user']"),
        ({"file_name": "a.json", "num_samples": 0}, "'num_samples' must be a positive integer"),
        ({"file_name": "a.json", "ranking": "yes"}, "'ranking' must be true or false"),
        ("a.json", "expected an object"),
    ],
)
def test_registry_entry_errors_name_the_entry_only_when_it_is_used(tmp_path, entry, fragment):
    registry = write_json(tmp_path / "reg.json", {"good": {"file_name": "x.json"}, "broken": entry})
    assert set(load_dataset_info(str(registry))) == {"good", "broken"}
    assert resolve_dataset("good", dataset_info=str(registry)).path == str(tmp_path / "x.json")
    with pytest.raises(ConfigError) as info:
        resolve_dataset("broken", dataset_info=str(registry))
    assert f"{registry}, entry 'broken'" in str(info.value)
    assert fragment in str(info.value)


def test_every_problem_of_an_entry_is_named_in_one_error(tmp_path):
    entry = {"file_name": 3, "formatting": "chatml", "kto": True, "columns": {"question": "q"}}
    registry = write_json(tmp_path / "reg.json", {"broken": entry})
    with pytest.raises(ConfigError) as info:
        resolve_dataset("broken", dataset_info=str(registry))
    for fragment in ("unknown key(s) ['kto']", "'file_name' must be a string", "'chatml'", "['question']"):
        assert fragment in str(info.value)


def test_missing_user_registry(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        resolve_dataset("x", dataset_info=str(tmp_path / "nope.json"))


def test_unknown_format_lists_the_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match="alpaca, sharegpt, openai, text, preference"):
        resolve_dataset("alpaca_demo", data_format="chatml")


def test_missing_local_path_and_hub_names(tmp_path):
    for missing in (str(tmp_path / "nope.json"), "data/nope.jsonl", "./nope", "a/b/c"):
        with pytest.raises(DataError, match="not found"):
            resolve_dataset(missing)
    spec = resolve_dataset("someone/some-dataset", "sharegpt")
    assert (spec.path, spec.data_format, spec.from_hub) == ("someone/some-dataset", "sharegpt", True)


def test_bad_columns_argument():
    with pytest.raises(ConfigError, match=r"columns: unknown key\(s\) \['question'\]"):
        resolve_dataset("alpaca_demo", columns={"question": "q"})


# ----------------------------------------------------------------------------- streaming large files


@pytest.fixture
def small_parts(monkeypatch):
    """Parts of 3 rows and an 8-character read buffer: every row boundary case happens in a tiny file."""
    from xtune.dataset import json_rows

    monkeypatch.setattr(json_rows, "ROWS_PER_PART", 3)
    monkeypatch.setattr(json_rows, "_CHUNK", 8)


def test_streamed_parts_agree_on_columns_and_keep_values_as_written(tmp_path, small_parts):
    rows = [
        {"instruction": "a", "output": "1"},
        {"instruction": "b", "output": "2", "n": 7},
        {"instruction": "c", "output": "3"},
        {"instruction": "d", "output": "4", "tools": [{"name": "f"}]},  # first seen in the second part
        {"instruction": "e", "output": "5", "n": "seven"},  # an int column in part 1, a string here
        {"instruction": "f", "output": "6", "n": 2.5},
        {"instruction": "g\n", "output": "7"},
    ]
    file = tmp_path / "a.json"
    file.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    ds = load_rows(resolve_dataset(str(file), "alpaca"))
    assert ds.column_names == ["instruction", "output", "n", "tools", "_source", "_row"]
    back = [{k: v for k, v in row.items() if not k.startswith("_") and v is not None} for row in ds]
    assert back == rows
    assert ds["_row"] == list(range(1, 8))
    assert [type(v) for v in ds["n"][1:3]] == [int, type(None)] and ds["n"][4] == "seven"


def test_errors_point_at_the_line_when_reading_in_pieces(tmp_path, small_parts):
    file = tmp_path / "a.json"
    good = ",\n".join(json.dumps({"instruction": f"q{i}", "output": "a"}) for i in range(5))
    file.write_text("[\n" + good + '\n  {"instruction": "c"}\n]')
    assert "a.json, line 7: invalid JSON: Expecting ',' delimiter" in load_error(file)
    file.write_text("[\n" + good + "\n] []")
    assert "a.json, line 7: invalid JSON: Extra data" in load_error(file)
    file.write_text("[\n" + good + ",\n]")
    assert "a.json, line 7: invalid JSON: Expecting value" in load_error(file)
    file.write_text("[\n" + good + ",\n" + '{"instruction": "x", "output": 12')
    assert "a.json, line 7: invalid JSON" in load_error(file)


def test_a_list_longer_than_a_part_reads_every_row(tmp_path, small_parts):
    file = tmp_path / "a.json"
    file.write_text(json.dumps([{"instruction": f"q{i}" * (i % 4), "output": str(i)} for i in range(20)]))
    ds = load_rows(resolve_dataset(str(file), "alpaca"))
    assert ds["output"] == [str(i) for i in range(20)] and ds["_row"] == list(range(1, 21))


def test_uncached_processing_outlives_the_streamed_rows(tmp_path, tiny_llama):
    import gc

    from xtune.dataset import SFTDataset

    file = tmp_path / "a.json"
    file.write_text(json.dumps([{"instruction": f"q{i}", "output": f"answer {i}"} for i in range(6)]))
    dataset = SFTDataset(str(file), str(tiny_llama), data_format="alpaca", max_length=64, cache=False, num_proc=2)
    gc.collect()  # the raw rows' folder is gone now; the processed rows must not have lived there
    assert len(dataset) >= 1 and all(len(dataset[i]["input_ids"]) > 0 for i in range(len(dataset)))
    # DataLoader workers that are spawned reopen a dataset's files by name: each must still exist
    assert all(Path(entry["filename"]).exists() for entry in dataset.data.cache_files)
