"""Every finetune type trains under every stage: a loss and gradients on the trainable weights only."""

import pytest
import torch

from xtune.model import FinetuneModel
from xtune.stages.data import KTODataset, PreferenceDataset, kto_collate_fn, pair_collate_fn

STAGES = ["dpo", "orpo", "simpo", "kto", "rm"]
TYPES = ["full", "freeze", "lora", "dora"]  # qlora: the same adapters over a 4-bit base, GPU only


@pytest.fixture(scope="module")
def batches(tiny_llama):
    pairs = PreferenceDataset("preference_demo", str(tiny_llama), max_length=128)
    kto = KTODataset("kto_demo", str(tiny_llama), max_length=128)
    return {
        "pairs": pair_collate_fn([pairs[0], pairs[1]]),
        "kto": kto_collate_fn([kto[0], kto[1]]),
    }


@pytest.mark.parametrize("finetune_type", TYPES)
@pytest.mark.parametrize("stage", STAGES)
def test_every_type_trains_under_every_stage(tiny_llama, batches, stage, finetune_type):
    model = FinetuneModel(
        str(tiny_llama),
        finetune_type=finetune_type,
        dtype="fp32",
        freeze={"trainable_layers": 1, "trainable_modules": ["score"]},
        lora={"r": 4, "lora_alpha": 8, "lora_dropout": 0.0},
        objective={"type": stage},
    )
    batch = batches["kto" if stage == "kto" else "pairs"]
    if model.objective.needs_reference:
        with torch.no_grad():
            model.objective.reference = model.objective.reference_logps(model, batch)
    out = model(**batch)
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    trained = [p for p in model.parameters() if p.requires_grad]
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert trained and all(p.grad is not None for p in trained if p.grad is not None)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trained)
    assert all(p.grad is None for p in frozen)
    assert (len(frozen) == 0) is (finetune_type == "full")
