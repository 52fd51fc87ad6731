"""Every dataset of a mixture is checked before any is processed (xtune.dataset.precheck)."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from xtune.cli import main
from xtune.dataset import SFTDataset, process
from xtune.errors import ConfigError, DataError
from xtune.paths import MODEL_DIR

TOKENIZER = str(MODEL_DIR / "tiny_llama")
GOOD = [{"instruction": f"Question {i}?", "output": f"Answer {i}."} for i in range(20)]
CHAT = [{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}]


def write(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return path


@pytest.fixture
def processed(monkeypatch) -> list[str]:
    """The datasets the build tokenises (xtune.dataset.process._process), in order."""
    calls: list[str] = []
    original = process._process

    def spy(spec, *args, **kwargs):
        calls.append(spec.path)
        return original(spec, *args, **kwargs)

    monkeypatch.setattr(process, "_process", spy)
    return calls


# (what the second file is, its rows or text, build options, what the error says)
BROKEN = {
    "empty": ("", {}, "file is empty"),
    "invalid JSON": ('{"instruction": "a", "output": }\n', {}, "invalid JSON"),
    "another format": (CHAT, {}, "alpaca data needs the column 'instruction'"),
    "another format, bad rows skipped": (CHAT, {"skip_bad_rows": True}, "is this sharegpt data?"),
    "a bad first row": ([{"instruction": "Hi", "output": ""}, *GOOD], {}, "line 1: column 'output' is empty"),
    "a placeholder without a value": ([{"instruction": "Who?", "output": "I am {{name}}."}], {}, "{{name}}"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_second_file_fails_before_the_first_is_processed(tmp_path, processed, case):
    rows, options, says = BROKEN[case]
    first = write(tmp_path / "first.jsonl", GOOD)
    second = tmp_path / "second.jsonl"
    second.write_text(rows) if isinstance(rows, str) else write(second, rows)
    cache = tmp_path / "cache"
    with pytest.raises((DataError, ConfigError)) as info:
        SFTDataset(f"{first},{second}", TOKENIZER, data_format="alpaca", cache_dir=str(cache), **options)
    assert str(second) in str(info.value) and says in str(info.value)
    assert processed == []  # the first dataset was not tokenised
    assert not cache.exists() or not list(cache.iterdir())  # and nothing was cached (no build folder left)
    # the same mixture with the second file fixed builds, tokenising each dataset once
    write(second, GOOD[:5])
    built = SFTDataset(f"{first},{second}", TOKENIZER, data_format="alpaca", cache_dir=str(cache), **options)
    assert processed == [str(first), str(second)] and built.statistics()["samples"] == 25


def test_a_registered_file_that_is_gone_fails_before_anything_is_processed(tmp_path, processed):
    registry = tmp_path / "dataset_info.json"
    registry.write_text(json.dumps({"mine": {"file_name": "gone.jsonl"}}))
    first = write(tmp_path / "first.jsonl", GOOD)
    with pytest.raises(DataError, match=r"gone.jsonl \(dataset 'mine'\): no such file or folder"):
        SFTDataset([str(first), "mine"], TOKENIZER, dataset_info=str(registry), cache=False)
    assert processed == []


def test_a_table_without_the_formats_column_fails_even_when_bad_rows_are_skipped(tmp_path, processed):
    """A Parquet (or CSV) file has the same columns in every row: none would convert, so it is refused."""
    first = write(tmp_path / "first.jsonl", GOOD)
    table = write(tmp_path / "second.parquet", [{"question": "Hi", "answer": "Hello"}])
    with pytest.raises(DataError, match=r"second.parquet, row 1: .*its columns: \['question', 'answer'\]"):
        SFTDataset([str(first), str(table)], TOKENIZER, skip_bad_rows=True, cache=False)
    assert processed == []
    # mapped, the same file trains
    mapped = dict(path=str(table), columns={"instruction": "question", "output": "answer"})
    assert len(SFTDataset([str(first), mapped], TOKENIZER, pack_to_max_length=False, cache=False)) == 21


def test_a_bad_first_json_row_is_skipped_and_counted_when_bad_rows_are_skipped(tmp_path):
    """JSON rows may differ: a first row without the format's column is one bad row, not a wrong format."""
    data = write(tmp_path / "rows.jsonl", [{"output": "no instruction"}, *GOOD])
    dataset = SFTDataset(str(data), TOKENIZER, skip_bad_rows=True, pack_to_max_length=False, cache=False)
    stats = dataset.statistics()
    assert len(dataset) == 20 and stats["skipped_bad_rows"]["count"] == 1


def test_check_dataset_exits_2_naming_the_second_file(tmp_path, capsys, processed):
    first = write(tmp_path / "first.jsonl", GOOD)
    second = tmp_path / "second.jsonl"
    second.write_text("")
    items = f"data_path=['{first}','{second}']"
    assert main(["check-dataset", "tiny_llama_full_identity_e3", "--cfg-options", items, "data_format='alpaca'"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("xtune: error:") and f"{second}: file is empty" in err
    assert processed == []


def test_a_hub_dataset_is_checked_when_it_will_be_processed(tmp_path, processed, monkeypatch):
    """A Hub dataset's first row is its download: checked on a cache miss, not loaded at all on a hit."""
    import datasets

    hub = {"owner/chat": CHAT, "owner/alpaca": GOOD}
    loads: list[str] = []

    def load_dataset(path, **kwargs):
        loads.append(path)
        return datasets.Dataset.from_list(hub[path])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    first, cache = write(tmp_path / "first.jsonl", GOOD), tmp_path / "cache"
    with pytest.raises(DataError, match=r"owner/chat, row 1: .*is this sharegpt data\?"):
        SFTDataset([str(first), "owner/chat"], TOKENIZER, data_format="alpaca", cache_dir=str(cache))
    assert processed == [] and (not cache.exists() or not list(cache.iterdir()))
    loads.clear()
    SFTDataset([str(first), "owner/alpaca"], TOKENIZER, data_format="alpaca", cache_dir=str(cache))
    assert loads == ["owner/alpaca", "owner/alpaca"]  # checked, then processed
    loads.clear()
    SFTDataset([str(first), "owner/alpaca"], TOKENIZER, data_format="alpaca", cache_dir=str(cache))
    assert loads == []  # a cache hit needs no download
