"""A reward model trains on pairs, converts to an HF folder that AutoModelForSequenceClassification (plus
peft for an adapter) loads with the same rewards, and `xtune chat` refuses it."""

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification

from xtune.cli import main
from xtune.config import load_config
from xtune.convert.checkpoint import build_trained_model, read_checkpoint
from xtune.convert.pth_to_hf import pth_to_hf
from xtune.stages.data import PreferenceDataset, pair_collate_fn
from xtune.stages.rm import sequence_rewards
from xtune.testing.training import train

pytestmark = pytest.mark.slow

RM = "tiny_llama_lora_rm_preference_e3"


def test_reward_model_converts_to_a_sequence_classifier_and_chat_refuses_it(tiny_llama, tmp_path, capsys):
    options = {
        "pretrained_model_name_or_path": str(tiny_llama),
        "dtype": "fp32",
        "train_cfg.max_epochs": None,
        "train_cfg.max_iters": 2,
        "evaluation_inputs": [],
    }
    assert train(RM, tmp_path, options) == 0
    checkpoint = (tmp_path / "last_checkpoint").read_text().strip()
    config = tmp_path / f"{RM}.py"
    out = pth_to_hf(config, checkpoint, tmp_path / "hf")

    ours = build_trained_model(load_config(config), read_checkpoint(checkpoint).state, dtype="fp32")
    base = AutoModelForSequenceClassification.from_pretrained(tiny_llama, num_labels=1, dtype=torch.float32)
    loaded = PeftModel.from_pretrained(base, str(out)).eval()
    dataset = PreferenceDataset("preference_demo", str(tiny_llama))
    batch = pair_collate_fn([dataset[0], dataset[1]])
    with torch.no_grad():
        expected = sequence_rewards(ours, batch)
        for row in range(4):
            real = int(batch["attention_mask"][row].sum())
            hf = loaded(input_ids=batch["input_ids"][row : row + 1, :real]).logits
            assert hf.shape == (1, 1)
            assert float(hf[0, 0]) == pytest.approx(float(expected[row]), abs=1e-5)
    assert main(["chat", str(tiny_llama), "--adapter", str(out), "--prompt", "hi"]) == 2
    assert "is a reward model" in capsys.readouterr().err
