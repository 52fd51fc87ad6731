"""xtune trains exactly what plain transformers / peft train, and packing or accumulation change nothing.

All runs: fp32 CPU, constant lr, no clipping, file order (PARITY_OPTIONS).
"""

import json

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from xtune.dataset import SFTDataset, sft_collate_fn
from xtune.testing.training import PARITY_OPTIONS, final_weights, last_checkpoint, max_difference, train

pytestmark = pytest.mark.slow

FULL = "tiny_llama_full_identity_e3"
LORA = "tiny_llama_lora_identity_e3"


def _options(model, data, **extra) -> dict:
    return {
        **PARITY_OPTIONS,
        "pretrained_model_name_or_path": str(model),
        "data_path": str(data),
        "data_format": "alpaca",
        "prompt_template": "auto",
        "max_length": 512,
        **extra,
    }


def _batches(model, data, batch_size: int) -> list[dict]:
    dataset = SFTDataset(str(data), str(model), data_format="alpaca", max_length=512, pack_to_max_length=False)
    return [
        sft_collate_fn([dataset[j] for j in range(i, min(i + batch_size, len(dataset)))])
        for i in range(0, len(dataset), batch_size)
    ]


def _plain_loop(model, batches, epochs: int, lr: float) -> list[float]:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    losses = []
    for _ in range(epochs):
        for batch in batches:
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
            out.loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(float(out.loss))
    return losses


def test_full_finetuning_matches_plain_transformers(tiny_llama, alpaca_file, tmp_path):
    # 16 rows, batch 2, 2 epochs: 16 optimizer steps
    assert (
        train(
            FULL,
            tmp_path,
            _options(tiny_llama, alpaca_file, batch_size=2, accumulative_counts=1, lr=1e-3, max_epochs=2),
        )
        == 0
    )
    ours = final_weights(tmp_path)
    plain = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    before = {k: v.clone() for k, v in plain.state_dict().items()}
    _plain_loop(plain, _batches(tiny_llama, alpaca_file, 2), epochs=2, lr=1e-3)
    reference = plain.state_dict()
    assert max_difference(ours, reference) < 1e-4
    assert max_difference(ours, before) > 1e-3  # training moved the weights: the comparison means something
    # xtune's AdamW is the fused one; the plain loop's is not, and they agree
    assert last_checkpoint(tmp_path)["optimizer"]["param_groups"][0]["fused"] is True


def test_lora_matches_plain_peft(tiny_llama, alpaca_file, tmp_path):
    import xtune.engine  # noqa: F401
    from xtune.cli.train import prepare_config
    from xtune.registry import RUNNERS

    options = _options(
        tiny_llama,
        alpaca_file,
        batch_size=4,
        accumulative_counts=1,
        lr=1e-2,
        max_epochs=2,
        **{"model.lora": {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": "all-linear"}},
    )
    from xtune.cli import build_parser
    from xtune.testing.training import cfg_options

    args = build_parser().parse_args(
        ["train", LORA, "--work-dir", str(tmp_path), "--cfg-options", *cfg_options(options)]
    )
    runner = RUNNERS.build(prepare_config(args))
    initial = {k[len("llm.") :]: v.clone() for k, v in runner.model.state_dict().items()}
    assert initial and all("lora_" in k for k in initial)  # only adapter weights are trainable and saved
    runner.train()
    ours = final_weights(tmp_path)
    xtune_losses = json.loads((tmp_path / "loss.json").read_text())["loss"]

    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    plain = get_peft_model(
        base, LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear")
    )
    plain.load_state_dict(initial, strict=False)
    plain_losses = _plain_loop(plain, _batches(tiny_llama, alpaca_file, 4), epochs=2, lr=1e-2)
    assert xtune_losses[0] == pytest.approx(plain_losses[0], abs=1e-6)
    assert xtune_losses == pytest.approx(plain_losses, abs=1e-4)
    reference = {k: v for k, v in plain.state_dict().items() if "lora_" in k}
    assert set(ours) == set(reference)
    assert max_difference(ours, reference) < 1e-4
    assert max_difference(ours, initial) > 1e-3


def test_packed_rows_train_like_one_padded_batch(tiny_llama, alpaca_file, tmp_path):
    # All 16 samples fit one packed row of 2048 tokens; unpacked, they are one batch of 16.
    common = {"accumulative_counts": 1, "lr": 1e-3, "max_epochs": 3, "max_length": 2048}
    assert (
        train(
            FULL,
            tmp_path / "packed",
            _options(tiny_llama, alpaca_file, pack_to_max_length=True, batch_size=1, **common),
        )
        == 0
    )
    assert (
        train(
            FULL,
            tmp_path / "padded",
            _options(tiny_llama, alpaca_file, pack_to_max_length=False, batch_size=16, **common),
        )
        == 0
    )
    packed, padded = final_weights(tmp_path / "packed"), final_weights(tmp_path / "padded")
    assert len(json.loads((tmp_path / "packed" / "loss.json").read_text())["loss"]) == 3  # one row per step
    assert max_difference(packed, padded) < 1e-5


def test_accumulation_equals_a_bigger_batch(tiny_llama, alpaca_file, tmp_path):
    common = {"lr": 1e-3, "max_epochs": 1}
    assert (
        train(FULL, tmp_path / "acc", _options(tiny_llama, alpaca_file, batch_size=2, accumulative_counts=2, **common))
        == 0
    )
    assert (
        train(FULL, tmp_path / "big", _options(tiny_llama, alpaca_file, batch_size=4, accumulative_counts=1, **common))
        == 0
    )
    assert max_difference(final_weights(tmp_path / "acc"), final_weights(tmp_path / "big")) < 1e-5
