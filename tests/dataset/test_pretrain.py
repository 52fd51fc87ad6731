"""Pretraining text is joined with EOS and cut into max_length blocks: no document and no token lost."""

import json

from xtune.dataset import SFTDataset
from xtune.dataset.encode import IGNORE_INDEX
from xtune.paths import MODEL_DIR

TOKENIZER = str(MODEL_DIR / "tiny_llama")


def test_documents_are_joined_with_eos_and_cut_into_blocks(tmp_path):
    docs = [f"Document {i} says " + "word " * (40 + 30 * i) for i in range(5)]
    data = tmp_path / "corpus.jsonl"
    data.write_text("\n".join(json.dumps({"text": doc}) for doc in docs))
    blocks = SFTDataset(str(data), TOKENIZER, data_format="text", max_length=64, cache=False)
    tok = blocks.tokenizer
    expected = []
    for doc in docs:
        expected += tok(doc)["input_ids"] + [tok.eos_token_id]
    stream = [t for i in range(len(blocks)) for t in blocks[i]["input_ids"]]
    assert stream == expected  # every token of every document, in order, EOS after each
    assert all(len(blocks[i]["input_ids"]) == 64 for i in range(len(blocks) - 1))
    assert 0 < len(blocks[len(blocks) - 1]["input_ids"]) <= 64
    for i in range(len(blocks)):
        row = blocks[i]
        assert row["labels"][0] == IGNORE_INDEX and row["labels"][1:] == row["input_ids"][1:]
        assert "position_ids" not in row  # one stream: positions run 0..len-1 (the collator's default)
    stats = blocks.statistics()
    assert stats["documents"] == 5 and stats["blocks"] == len(blocks) == -(-len(expected) // 64)
    assert stats["tokens_kept"] == stats["tokens"] == len(expected) and stats["truncated"] == 0
    assert stats["trained_tokens"] == len(expected) - len(blocks)


def test_per_document_mode_stays_as_an_option():
    per_doc = SFTDataset("pretrain_demo", TOKENIZER, max_length=16, concat_texts=False, pack_to_max_length=False)
    joined = SFTDataset("pretrain_demo", TOKENIZER, max_length=16)
    per_stats, joined_stats = per_doc.statistics(), joined.statistics()
    assert per_stats["truncated"] > 0 and per_stats["tokens"] < joined_stats["tokens_kept"]
    assert joined_stats["documents"] == per_stats["rows_read"]
    assert all(len(per_doc[i]["input_ids"]) <= 16 for i in range(len(per_doc)))
