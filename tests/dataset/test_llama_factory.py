"""LLaMA-Factory's dataset_info.json format: every documented key either works or gives its documented error.

The registry below is written here with small files of our own; it uses every key of LLaMA-Factory's
``data/README.md`` (sources, formatting, ranking, subset, split, folder, num_samples, file_sha1, every
column and every tag). No entry may be silently wrong.
"""

import json
from pathlib import Path

import pytest

from xtune.dataset import SFTDataset
from xtune.dataset.dataset_info import check_stage, resolve_dataset
from xtune.dataset.encode import IGNORE_INDEX
from xtune.dataset.formats import convert_row
from xtune.errors import ConfigError, DataError
from xtune.paths import MODEL_DIR

TOKENIZER = str(MODEL_DIR / "tiny_llama")


ALPACA_ROWS = [
    {"q": f"Question {i}?", "ctx": "", "a": f"Answer {i}.", "sys": "Be brief.", "hist": [["Hi", "Hello"]]}
    for i in range(6)
]
SHAREGPT_ROWS = [
    {
        "dialog": [
            {"who": "me", "text": "Weather in Paris?"},
            {"who": "call", "text": json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})},
            {"who": "result", "text": '{"temp": 21}'},
            {"who": "bot", "text": "It is 21 degrees."},
        ],
        "fns": json.dumps([{"name": "get_weather", "description": "Weather", "parameters": {"type": "object"}}]),
    }
]
TAGS = {
    "role_tag": "who",
    "content_tag": "text",
    "user_tag": "me",
    "assistant_tag": "bot",
    "observation_tag": "result",
    "function_tag": "call",
    "system_tag": "rules",
}
OPENAI_ROWS = [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}]
KTO_ROWS = [
    {"instruction": "Hi", "output": "Hello", "label": True},
    {"instruction": "Hi", "output": "Go", "label": False},
]
PREF_ROWS = [{"instruction": "Hi", "chosen": "Hello", "rejected": "Go away"}]
MM_ROWS = [{"instruction": "<image>What is this?", "output": "A cat.", "images": ["cat.jpg"]}]

REGISTRY = {
    "alpaca_all_columns": {
        "file_name": "alpaca.json",
        "file_sha1": "0000000000000000000000000000000000000000",
        "columns": {"prompt": "q", "query": "ctx", "response": "a", "system": "sys", "history": "hist"},
    },
    "sharegpt_all_tags": {
        "file_name": "sharegpt.json",
        "formatting": "sharegpt",
        "columns": {"messages": "dialog", "tools": "fns"},
        "tags": TAGS,
    },
    "openai_chat": {"file_name": "openai.json", "formatting": "openai", "columns": {"messages": "messages"}},
    "pt_text": {"file_name": "wiki.txt", "columns": {"prompt": "text"}},
    "sampled": {"file_name": "alpaca.json", "num_samples": 10, "columns": {"prompt": "q", "response": "a"}},
    "local_subset_folder": {"file_name": "alpaca.json", "subset": "en", "folder": "x", "columns": {"prompt": "q"}},
    "hub_all_keys": {
        "hf_hub_url": "owner/name",
        "ms_hub_url": "ms-owner/name",
        "om_hub_url": "om-owner/name",
        "subset": "en",
        "split": "validation",
        "folder": "python",
        "num_samples": 100,
    },
    "ms_only": {"ms_hub_url": "AI-ModelScope/x"},
    "om_only": {"om_hub_url": "openmind/x"},
    "script": {"script_url": "belle_multiturn", "formatting": "sharegpt"},
    "cloud": {"cloud_file_name": "s3://bucket/a.json"},
    "local_test_split": {"file_name": "alpaca.json", "split": "test"},
    "script_and_split": {"script_url": "x", "split": "test"},
    "ranking": {"file_name": "pref.json", "ranking": True, "columns": {"chosen": "chosen", "rejected": "rejected"}},
    "kto": {"file_name": "kto.json", "columns": {"response": "output", "kto_tag": "label"}},
    "images": {"file_name": "mm.json", "columns": {"images": "images"}},
    "videos": {"file_name": "mm.json", "columns": {"videos": "videos"}},
    "audios": {"file_name": "mm.json", "columns": {"audios": "audios"}},
    "broken": {"file_name": "x.json", "formatting": "chatml"},
}


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("lf")
    files = {
        "alpaca.json": ALPACA_ROWS,
        "sharegpt.json": SHAREGPT_ROWS,
        "openai.json": OPENAI_ROWS,
        "kto.json": KTO_ROWS,
        "pref.json": PREF_ROWS,
        "mm.json": MM_ROWS,
    }
    for name, rows in files.items():
        (folder / name).write_text(json.dumps(rows))
    (folder / "wiki.txt").write_text("\n".join(f"Document {i}. " + "word " * 60 for i in range(5)))
    (folder / "dataset_info.json").write_text(json.dumps(REGISTRY))
    return str(folder / "dataset_info.json")


def build(registry: str, name: str, **kwargs) -> SFTDataset:
    kwargs = {"max_length": 256, "pack_to_max_length": False, "cache": False, **kwargs}
    return SFTDataset(name, kwargs.pop("tokenizer", TOKENIZER), dataset_info=registry, **kwargs)


def test_registry_exercises_every_documented_key():
    keys = {key for entry in REGISTRY.values() for key in entry}
    columns = {key for entry in REGISTRY.values() for key in entry.get("columns", {})}
    tags = {key for entry in REGISTRY.values() for key in entry.get("tags", {})}
    assert keys >= {"hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name", "file_name"}
    assert keys >= {"file_sha1", "formatting", "ranking", "subset", "split", "folder", "num_samples"}
    assert columns >= {"prompt", "query", "response", "history", "messages", "system", "tools"}
    assert columns >= {"images", "videos", "audios", "chosen", "rejected", "kto_tag"}
    assert tags == set(TAGS)


def test_alpaca_entry_with_every_column(registry):
    dataset = build(registry, "alpaca_all_columns")
    assert dataset.statistics()["samples"] == len(ALPACA_ROWS)
    sample = convert_row({**ALPACA_ROWS[0], "_source": "a.json", "_row": 1}, dataset.spec)
    assert [m["role"] for m in sample["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert sample["messages"][-1]["content"] == "Answer 0."


def test_sharegpt_entry_with_every_tag(registry):
    spec = resolve_dataset("sharegpt_all_tags", dataset_info=registry)
    sample = convert_row({**SHAREGPT_ROWS[0], "_source": "s.json", "_row": 1}, spec)
    assert [m["role"] for m in sample["messages"]] == ["user", "assistant", "tool", "assistant"]
    assert sample["messages"][1]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert sample["tools"][0]["function"]["name"] == "get_weather"
    system_row = {"dialog": [{"who": "rules", "text": "Be kind."}, *SHAREGPT_ROWS[0]["dialog"]]}
    assert convert_row({**system_row, "_source": "s.json", "_row": 2}, spec)["messages"][0] == {
        "role": "system",
        "content": "Be kind.",
    }
    assert build(registry, "sharegpt_all_tags", prompt_template="qwen2_5").statistics()["samples"] == 1


def test_openai_formatting_and_pretraining_prompt_column(registry):
    assert build(registry, "openai_chat").statistics()["samples"] == 1
    text = build(registry, "pt_text", data_format="text", max_length=64)
    assert text.spec.columns == {"text": "text"}
    assert text.statistics()["documents"] == 5


def test_num_samples_draws_rows_with_repeats(registry):
    dataset = build(registry, "sampled")
    assert len(dataset) == 10  # 6 rows: every row once, 4 drawn a second time
    assert sorted(set(dataset.valid.tolist())) == list(range(6))


def test_hub_keys_reach_the_loader_and_local_files_ignore_subset_and_folder(registry):
    spec = resolve_dataset("hub_all_keys", dataset_info=registry)
    # LLaMA-Factory prefers hf_hub_url over ModelScope/openmind unless told otherwise; so does xtune.
    assert (spec.path, spec.from_hub, spec.subset, spec.split, spec.folder, spec.num_samples) == (
        "owner/name",
        True,
        "en",
        "validation",
        "python",
        100,
    )
    local = resolve_dataset("local_subset_folder", dataset_info=registry)
    assert (local.subset, local.folder, local.from_hub) == (None, None, False)


@pytest.mark.parametrize(
    "name,fragments",
    [
        ("ms_only", ["'ms_hub_url'", "ModelScope"]),
        ("om_only", ["'om_hub_url'", "openmind"]),
        ("script", ["'script_url'", "loading scripts"]),
        ("cloud", ["'cloud_file_name'", "s3/gcs"]),
        ("local_test_split", ["'split': 'test'", "only the 'train' split"]),
        ("script_and_split", ["'script_url'", "'split': 'test'"]),
    ],
)
def test_keys_xtune_cannot_honour_are_named_together(registry, name, fragments):
    with pytest.raises(ConfigError) as info:
        resolve_dataset(name, dataset_info=registry)
    message = str(info.value)
    assert f"entry '{name}': xtune cannot use" in message and "'file_name'" in message
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize(
    "name,stage_fragment",
    [
        ("ranking", "preference stages (dpo, orpo, simpo, rm)"),
        ("kto", "the kto stage"),
        ("images", "multimodal (vision) stage"),
        ("videos", "multimodal (video) stage"),
        ("audios", "multimodal (audio) stage"),
    ],
)
def test_columns_of_other_stages_are_refused_for_sft_naming_the_stage(registry, name, stage_fragment):
    with pytest.raises(ConfigError) as info:
        build(registry, name)
    assert f"dataset '{name}' cannot train the sft stage" in str(info.value)
    assert stage_fragment in str(info.value)


def test_stage_check_lets_the_stage_that_uses_a_column_through(registry):
    check_stage(resolve_dataset("ranking", dataset_info=registry), "dpo", uses=("chosen", "rejected"))
    check_stage(resolve_dataset("kto", dataset_info=registry), "kto", uses=("kto_tag",))
    spec = resolve_dataset("kto", dataset_info=registry)
    assert spec.columns == {"output": "output", "kto_tag": "label"}  # the kto stage reads the label from here


def test_media_column_in_an_unregistered_file_is_an_error_not_dropped(registry):
    mm = str(Path(registry).parent / "mm.json")
    with pytest.raises(DataError) as info:
        SFTDataset(mm, TOKENIZER, data_format="alpaca", cache=False)
    assert "mm.json, row 1: column 'images' holds images" in str(info.value)
    assert "skip_bad_rows" in str(info.value)


def test_a_bad_entry_does_not_block_the_others(registry):
    assert build(registry, "openai_chat").statistics()["samples"] == 1
    with pytest.raises(ConfigError, match="entry 'broken': 'formatting': unknown data format 'chatml'"):
        resolve_dataset("broken", dataset_info=registry)


def test_trained_tokens_of_a_registry_entry(registry):
    dataset = build(registry, "alpaca_all_columns")
    item = dataset[0]
    trained = [t for t, label in zip(item["input_ids"], item["labels"]) if label != IGNORE_INDEX]
    assert "Answer" in dataset.tokenizer.decode(trained)
