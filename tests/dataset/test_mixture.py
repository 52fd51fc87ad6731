"""Several datasets in one data_path: names, lists, max_samples, weights, statistics and caches per dataset."""

import json

import numpy as np
import pytest

from xtune.dataset import SFTDataset
from xtune.dataset.mixture import draw, split_data_path
from xtune.errors import ConfigError
from xtune.paths import MODEL_DIR

TOKENIZER = str(MODEL_DIR / "tiny_llama")
PLACEHOLDERS = {"name": "Bot", "author": "Team"}


def build(data_path, **kwargs) -> SFTDataset:
    kwargs = {"max_length": 256, "pack_to_max_length": False, "placeholders": PLACEHOLDERS, "cache": False, **kwargs}
    return SFTDataset(data_path, TOKENIZER, **kwargs)


def test_comma_separated_names_mix_datasets_with_statistics_per_dataset():
    identity, alpaca = build("identity"), build("alpaca_demo")
    mixed = build("identity,alpaca_demo")
    stats = mixed.statistics()
    assert len(mixed) == len(identity) + len(alpaca)
    assert set(stats["datasets"]) == {"identity", "alpaca_demo"}
    assert stats["datasets"]["identity"]["used"] == len(identity)
    assert stats["datasets"]["alpaca_demo"]["used"] == len(alpaca)
    assert stats["tokens"] == identity.statistics()["tokens"] + alpaca.statistics()["tokens"]
    # the mixture's rows are the datasets' rows, in order
    assert mixed[len(identity)]["input_ids"] == alpaca[0]["input_ids"]


def test_list_items_take_max_samples_weight_and_their_own_format(tmp_path):
    chat = tmp_path / "chat.jsonl"
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    chat.write_text("\n".join(json.dumps({"dialog": turns}) for _ in range(4)))
    mixed = build(
        [
            dict(path="identity", max_samples=5),
            dict(path="alpaca_demo", weight=0.5),
            dict(path=str(chat), data_format="openai", columns={"messages": "dialog"}, weight=2),
        ]
    )
    per = mixed.statistics()["datasets"]
    alpaca_rows = build("alpaca_demo").statistics()["samples"]
    assert per["identity"]["used"] == 5
    assert per["alpaca_demo"]["used"] == round(alpaca_rows * 0.5)
    assert per[str(chat)]["used"] == 8 and per[str(chat)]["data_format"] == "openai"
    assert len(mixed) == 5 + round(alpaca_rows * 0.5) + 8
    # max_samples keeps the first rows
    assert mixed[0]["input_ids"] == build("identity")[0]["input_ids"]


def test_draw_repeats_whole_rows_then_a_seeded_subset():
    picked = draw(4, 10, seed=3)
    assert sorted(np.bincount(picked, minlength=4).tolist()) == [2, 2, 3, 3]
    assert picked.tolist() == draw(4, 10, seed=3).tolist()
    assert len(set(draw(100, 50, seed=1).tolist())) == 50


def test_each_dataset_is_cached_on_its_own(tmp_path):
    cache = tmp_path / "cache"
    build("identity", cache=True, cache_dir=str(cache))
    assert len(list(cache.iterdir())) == 1
    build("identity,alpaca_demo", cache=True, cache_dir=str(cache))
    assert len(list(cache.iterdir())) == 2  # identity's cache is reused, alpaca_demo's added
    build(["identity", dict(path="alpaca_demo", max_samples=3, weight=3)], cache=True, cache_dir=str(cache))
    assert len(list(cache.iterdir())) == 2  # choosing rows does not reprocess


@pytest.mark.parametrize(
    "data_path,fragment",
    [
        ("identity,,alpaca_demo", "empty name between commas"),
        ([], "list of datasets is empty"),
        ([dict(path="identity", weight=0)], "weight must be a number > 0"),
        ([dict(path="identity", max_samples=0)], "max_samples must be a positive integer"),
        ([dict(path="identity", sample=3)], "unknown key(s) ['sample']"),
        ([dict(name="identity")], "expected a name/path or a dict with 'path'"),
        ("identity,identity", "names a dataset twice"),
        ("identity,pretrain_demo", "mixes pretraining text with conversations"),
    ],
)
def test_mixture_errors(data_path, fragment):
    with pytest.raises(ConfigError) as info:
        build(data_path)
    assert fragment in str(info.value)


def test_a_path_with_a_comma_is_one_dataset(tmp_path):
    odd = tmp_path / "a,b.json"
    odd.write_text(json.dumps([{"instruction": "q", "output": "a"}]))
    assert split_data_path(str(odd)) == [str(odd)]
    assert split_data_path("a , b") == ["a", "b"]
