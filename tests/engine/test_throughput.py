"""Throughput accounting: real tokens only, attention within samples, the run's summary file."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from xtune.dataset import SFTDataset
from xtune.dataset.collate import sft_collate_fn
from xtune.engine.hooks.throughput import attention_width, matmul_parameters, sample_lengths, training_flops
from xtune.paths import MODEL_DIR
from xtune.testing import make_tiny_model
from xtune.testing.training import PARITY_OPTIONS, train

LORA = "tiny_llama_lora_identity_e3"


def test_training_flops_count_each_sample_attending_to_itself():
    # 10 matmul parameters, 2 layers of width 4; samples of 3 and 5 tokens
    assert training_flops(10, 2, 4, [3, 5]) == 6 * 10 * 8 + 6 * 2 * 4 * (9 + 25)


def test_sample_lengths_leave_out_padding_in_packed_and_unpacked_batches():
    packed = sft_collate_fn(
        [
            {"input_ids": [5] * 7, "labels": [5] * 7, "position_ids": [0, 1, 2, 3, 0, 1, 2]},
            {"input_ids": [5] * 4, "labels": [5] * 4, "position_ids": [0, 1, 2, 3]},
        ]
    )
    assert packed["num_tokens"].tolist() == [7, 4]
    assert sample_lengths(packed) == [4, 3, 4]  # the second row's 3 pad positions form no sample
    padded = sft_collate_fn([{"input_ids": [5] * 6, "labels": [5] * 6}, {"input_ids": [5] * 2, "labels": [5] * 2}])
    assert sample_lengths(padded) == [6, 2]


@pytest.mark.parametrize("arch", ["llama", "gemma"])
def test_matmul_parameters_leave_out_the_input_embedding_unless_the_output_layer_is_it(arch, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(make_tiny_model(arch, tmp_path / arch))
    config = model.config
    total = sum(p.numel() for p in model.parameters())
    embedding = config.vocab_size * config.hidden_size
    expected = total if config.tie_word_embeddings else total - embedding
    assert matmul_parameters(model) == expected
    assert attention_width(config) == config.num_attention_heads * (config.head_dim or 16)


def test_the_run_summary_counts_every_real_token_after_warmup(tmp_path, capsys):
    options = {**PARITY_OPTIONS, "max_epochs": 1, "batch_size": 4, "custom_hooks.1.warmup_iters": 0}
    assert train(LORA, tmp_path / "cold", options) == 0
    summary = json.loads((tmp_path / "cold" / "throughput.json").read_text())
    dataset = SFTDataset(
        "identity",
        str(MODEL_DIR / "tiny_llama"),
        max_length=256,
        pack_to_max_length=False,
        placeholders={"name": "XTuneBot", "author": "the xtune team"},
    )
    iterations = -(-len(dataset) // 4)
    assert summary["iters"] == iterations
    assert summary["tokens"] == sum(dataset.lengths)
    assert summary["tokens_per_sec"] == pytest.approx(summary["tokens"] / summary["seconds"])
    assert summary["peak_memory_gib"] is None and summary["mfu"] is None  # no GPU here
    assert f"throughput: {summary['tokens_per_sec']:,.0f} tokens/s per device" in capsys.readouterr().out
    # what ran: auto attention on a CPU is per sample; checkpointing auto is off (a tiny step fits)
    assert summary["settings"] == {
        "attn_implementation": "xtune_varlen",
        "gradient_checkpointing": False,
        "loss_chunk_size": 1024,
        "optimizer": "AdamW (fused)",
        "clip_grad": None,  # max_norm None in these options
    }

    assert train(LORA, tmp_path / "warm", {**options, "custom_hooks.1.warmup_iters": 2}) == 0
    warm = json.loads((tmp_path / "warm" / "throughput.json").read_text())
    assert warm["iters"] == iterations - 2 and 0 < warm["tokens"] < summary["tokens"]
    assert torch.tensor(warm["seconds"]) > 0
