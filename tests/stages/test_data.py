"""Preference pairs and KTO rows: every layout, ids as the chat template renders them, truncation counted,
bad rows named by file and row, and check-dataset's statistics and dump."""

import json

import pytest
from transformers import AutoTokenizer

from xtune.cli import main
from xtune.dataset.encode import IGNORE_INDEX
from xtune.errors import DataError
from xtune.paths import DATASET_INFO
from xtune.stages.data import KTODataset, PreferenceDataset, kto_collate_fn, pair_collate_fn

DATA = DATASET_INFO.parent


def _template_ids(tokenizer, messages) -> list[int]:
    out = tokenizer.apply_chat_template(messages, tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def _trained(ids, labels) -> list[int]:
    return [t for t, label in zip(ids, labels) if label != IGNORE_INDEX]


@pytest.mark.parametrize("name", ["preference_demo", "preference_sharegpt_demo", "preference_openai_demo"])
def test_each_layout_gives_template_ids_with_labels_on_the_reply_only(tiny_llama, name):
    dataset = PreferenceDataset(name, str(tiny_llama))
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    raw = DATA / json.loads(DATASET_INFO.read_text())[name]["file_name"]
    rows = (
        [json.loads(line) for line in raw.read_text().splitlines()]
        if raw.suffix == ".jsonl"
        else json.loads(raw.read_text())
    )
    assert len(dataset) == len(rows) == 24 and dataset.statistics()["pairs"] == 24
    for index in (0, 5, 11):
        row, item = rows[index], dataset[index]
        if "instruction" in row:
            prompt = ([{"role": "system", "content": row["system"]}] if row.get("system") else []) + [
                {"role": "user", "content": row["instruction"]}
            ]
            replies = {side: row[side] for side in ("chosen", "rejected")}
        elif "conversations" in row:
            roles = {"human": "user", "gpt": "assistant"}
            prompt = [{"role": roles[t["from"]], "content": t["value"]} for t in row["conversations"]]
            replies = {side: row[side]["value"] for side in ("chosen", "rejected")}
        else:
            prompt = row["messages"]
            replies = {side: row[side]["content"] for side in ("chosen", "rejected")}
        for side, reply in replies.items():
            ids, labels = item[f"{side}_input_ids"], item[f"{side}_labels"]
            assert ids == _template_ids(tokenizer, prompt + [{"role": "assistant", "content": reply}])
            trained = tokenizer.decode(_trained(ids, labels))
            assert trained.startswith(reply) and len(trained) - len(reply) <= 12  # + the end-of-turn token
        start = next(i for i, label in enumerate(item["chosen_labels"]) if label != IGNORE_INDEX)
        assert item["chosen_input_ids"][:start] == item["rejected_input_ids"][:start]  # one shared prompt


def test_truncation_cuts_replies_at_the_end_and_counts_pairs(tiny_llama, tmp_path):
    long = "word " * 80
    rows = [
        {"instruction": "Say something long.", "chosen": long, "rejected": "Short."},
        {"instruction": "Hi " * 200, "chosen": "a", "rejected": "b"},  # the prompt alone is too long
        {"instruction": "Hi", "chosen": "Hello!", "rejected": "Bye."},
    ]
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps(rows))
    kept = PreferenceDataset(str(path), str(tiny_llama), data_format="alpaca", max_length=64)
    stats = kept.statistics()
    assert stats["pairs"] == 2 and stats["truncated"] == 1
    assert stats["dropped"] == {"dropped: prompt longer than max_length=64": 1}
    assert len(kept[0]["chosen_input_ids"]) == 64 and len(kept[0]["rejected_input_ids"]) < 64
    dropped = PreferenceDataset(str(path), str(tiny_llama), data_format="alpaca", max_length=64, truncation="drop")
    assert dropped.statistics()["pairs"] == 1 and sum(dropped.statistics()["dropped"].values()) == 2


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"instruction": "q", "chosen": "same", "rejected": "same"}, "row 2: chosen and rejected are identical"),
        ({"instruction": "q", "chosen": "yes"}, "row 2: column 'rejected' is missing or null"),
        ({"instruction": "q", "chosen": "yes", "rejected": 3}, "row 2: column 'rejected' must be text"),
    ],
)
def test_bad_pairs_are_row_numbered_errors(tiny_llama, tmp_path, row, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([{"instruction": "ok", "chosen": "a", "rejected": "b"}, row]))
    with pytest.raises(DataError, match=message):
        PreferenceDataset(str(path), str(tiny_llama), data_format="alpaca")
    skipped = PreferenceDataset(str(path), str(tiny_llama), data_format="alpaca", skip_bad_rows=True)
    assert len(skipped) == 1 and sum(skipped.statistics()["dropped"].values()) == 1


def test_kto_rows_carry_their_label_and_the_next_rows_reply_for_kl(tiny_llama, tmp_path):
    dataset = KTODataset("kto_demo", str(tiny_llama))
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    rows = json.loads((DATA / "kto_demo.json").read_text())
    stats = dataset.statistics()
    assert stats["completions"] == 24 and stats["desirable"] == 12 and stats["undesirable"] == 12
    item = dataset[3]
    assert item["kto_label"] is rows[3]["kto_tag"]
    mismatched = [
        {"role": "user", "content": rows[3]["instruction"]},
        {"role": "assistant", "content": rows[4]["output"]},
    ]
    assert item["kl_input_ids"] == _template_ids(tokenizer, mismatched)
    batch = kto_collate_fn([dataset[0], dataset[1]])
    assert batch["input_ids"].shape[0] == 4 and batch["kto_label"].tolist() == [True, False]
    path = tmp_path / "kto.json"
    path.write_text(json.dumps([{"instruction": "q", "output": "a", "kto_tag": "yes"}, rows[0]]))
    with pytest.raises(DataError, match="row 1: column 'kto_tag' must be true or false"):
        KTODataset(str(path), str(tiny_llama), data_format="alpaca")


def test_pair_batches_put_chosen_rows_first(tiny_llama):
    dataset = PreferenceDataset("preference_openai_demo", str(tiny_llama))
    batch = pair_collate_fn([dataset[2], dataset[7]])
    assert batch["index"].tolist() == [2, 7]
    assert batch["input_ids"].shape[0] == 4
    first = dataset[7]["rejected_input_ids"]
    assert batch["input_ids"][3, : len(first)].tolist() == first
    assert batch["attention_mask"][3].sum() == len(first)


def test_check_dataset_prints_pair_statistics_and_dumps_pairs(tmp_path, capsys):
    dump = tmp_path / "pairs.jsonl"
    assert main(["check-dataset", "tiny_llama_lora_dpo_preference_e3", "--dump", str(dump)]) == 0
    out = capsys.readouterr().out
    assert '"pairs": 24' in out and "[rejected]" in out
    records = [json.loads(line) for line in dump.read_text().splitlines()]
    assert len(records) == 24
    assert set(records[0]) == {"chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels"}
    kto = tmp_path / "kto.jsonl"
    assert main(["check-dataset", "tiny_llama_lora_kto_kto_demo_e3", "--dump", str(kto)]) == 0
    assert set(json.loads(kto.read_text().splitlines()[0])) == {"input_ids", "labels", "kto_label"}
