"""SFTDataset end to end: every format, packing, caching, statistics, the length-grouped sampler."""

import json

import pytest

from xtune.dataset import LengthGroupedSampler, SFTDataset
from xtune.dataset.encode import IGNORE_INDEX
from xtune.errors import ConfigError, DataError
from xtune.paths import MODEL_DIR

TOKENIZER = str(MODEL_DIR / "tiny_llama")


@pytest.mark.parametrize("name", ["alpaca_demo", "sharegpt_demo", "openai_demo", "identity", "pretrain_demo"])
def test_every_shipped_format_builds_with_trained_tokens(name):
    dataset = SFTDataset(
        name, TOKENIZER, max_length=512, pack_to_max_length=False, placeholders={"name": "Bot", "author": "Team"}
    )
    stats = dataset.statistics()
    assert stats["samples"] > 0 and stats["dropped"] == {}
    assert 0 < stats["trained_tokens"] <= stats["tokens"]
    item = dataset[0]
    assert any(label != IGNORE_INDEX for label in item["labels"])
    text = dataset.tokenizer.decode(item["input_ids"])
    assert "{{name}}" not in text


def test_packed_rows_hold_whole_samples_with_restarting_positions():
    unpacked = SFTDataset("alpaca_demo", TOKENIZER, max_length=256, pack_to_max_length=False)
    packed = SFTDataset("alpaca_demo", TOKENIZER, max_length=256, pack_to_max_length=True)
    assert len(packed) < len(unpacked)
    assert sum(len(packed[i]["input_ids"]) for i in range(len(packed))) == unpacked.statistics()["tokens"]
    for i in range(len(packed)):
        row = packed[i]
        assert len(row["input_ids"]) <= 256
        starts = [j for j, p in enumerate(row["position_ids"]) if p == 0]
        assert all(row["labels"][j] == IGNORE_INDEX for j in starts)  # no sample predicts across a boundary
    assert packed.statistics()["packing_efficiency"] > 0.9


def test_processed_data_is_cached_by_content(tmp_path):
    data = tmp_path / "rows.json"
    data.write_text(json.dumps([{"instruction": "hi", "input": "", "output": "hello"}] * 3))
    first = SFTDataset(str(data), TOKENIZER, data_format="alpaca", cache_dir=str(tmp_path / "cache"))
    again = SFTDataset(str(data), TOKENIZER, data_format="alpaca", cache_dir=str(tmp_path / "cache"))
    assert first.cache_key() == again.cache_key()
    assert len(list((tmp_path / "cache").iterdir())) == 1
    data.write_text(json.dumps([{"instruction": "hi", "input": "", "output": "bye"}] * 3))
    changed = SFTDataset(str(data), TOKENIZER, data_format="alpaca", cache_dir=str(tmp_path / "cache"))
    assert changed.cache_key() != first.cache_key()
    assert len(list((tmp_path / "cache").iterdir())) == 2
    other_length = SFTDataset(
        str(data), TOKENIZER, data_format="alpaca", max_length=64, cache_dir=str(tmp_path / "cache")
    )
    assert other_length.cache_key() != changed.cache_key()


def test_drop_truncation_and_skip_bad_rows_are_counted(tmp_path):
    data = tmp_path / "rows.jsonl"
    rows = [
        {"instruction": "short", "output": "ok"},
        {"instruction": "long", "output": "word " * 300},
        {"instruction": "no output"},
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(DataError, match="rows.jsonl"):
        SFTDataset(str(data), TOKENIZER, data_format="alpaca", max_length=64, cache=False)
    dataset = SFTDataset(
        str(data), TOKENIZER, data_format="alpaca", max_length=64, truncation="drop", skip_bad_rows=True, cache=False
    )
    stats = dataset.statistics()
    assert stats["rows_read"] == 3 and stats["samples"] == 1
    assert sum(stats["dropped"].values()) == 2
    assert any("max_length" in reason for reason in stats["dropped"])


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="truncation"):
        SFTDataset("alpaca_demo", TOKENIZER, truncation="cut")
    with pytest.raises(ConfigError, match="data_format"):
        SFTDataset("alpaca_demo", TOKENIZER, data_format="xml")
    with pytest.raises(ConfigError, match="tokenizer"):
        SFTDataset("alpaca_demo", "/no/such/model")


class _Lengths:
    def __init__(self, lengths):
        self.lengths = lengths


def test_length_grouped_sampler_groups_lengths_and_covers_every_sample():
    lengths = [(i * 37) % 101 + 1 for i in range(400)]
    sampler = LengthGroupedSampler(_Lengths(lengths), batch_size=4, group_size=10, seed=0)
    order = list(sampler)
    assert sorted(order) == list(range(400))
    batches = [order[i : i + 4] for i in range(0, 400, 4)]
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 10  # random batches of these lengths spread ~60 tokens
    sampler.set_epoch(1)
    assert list(sampler) != order


def test_placeholders_left_without_values_are_an_error_not_trained_literally():
    with pytest.raises(ConfigError) as info:
        SFTDataset("identity", TOKENIZER, cache=False)
    assert "identity.json, row 1: the text holds the placeholder {{name}}" in str(info.value)
    assert "name = '...'" in str(info.value)
    with pytest.raises(ConfigError, match=r"\{\{author\}\}"):
        SFTDataset("identity", TOKENIZER, cache=False, placeholders={"name": "Bot", "author": None})
    dataset = SFTDataset("identity", TOKENIZER, cache=False, placeholders={"name": "Bot", "author": "Team"})
    assert "Bot" in dataset.tokenizer.decode(dataset[0]["input_ids"])


def test_name_and_author_are_knobs_of_every_config():
    from xtune.config import load_config

    cfg = load_config("qwen3_8b_lora_alpaca_e3", {"name": "Ada", "author": "Lab"})
    assert cfg.train_dataset["placeholders"] == {"name": "Ada", "author": "Lab"}
    assert load_config("qwen3_8b_lora_alpaca_e3").train_dataset["placeholders"] == {"name": None, "author": None}


def test_skipped_bad_rows_are_reported_how_many_why_and_where(tmp_path):
    data = tmp_path / "chat.jsonl"
    good = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    two_users = {"conversations": [{"from": "human", "value": "q"}, {"from": "human", "value": "q"}]}
    rows = [good, two_users, good, {"conversations": []}, two_users]
    data.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(DataError) as info:
        SFTDataset(str(data), TOKENIZER, data_format="sharegpt", cache=False)
    assert "chat.jsonl, line 2:" in str(info.value) and "skip_bad_rows=True" in str(info.value)
    dataset = SFTDataset(str(data), TOKENIZER, data_format="sharegpt", skip_bad_rows=True, cache=False)
    stats = dataset.statistics()
    assert stats["samples"] == 2
    bad = stats["skipped_bad_rows"]
    assert bad["count"] == 3
    assert bad["first"] == [f"{data}, line 2", f"{data}, line 4", f"{data}, line 5"]
    assert bad["reasons"] == {
        "turn 2 is a second user turn in a row": 2,
        "empty conversation in column 'conversations'": 1,
    }
