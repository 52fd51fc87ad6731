"""Validation loss every eval_steps on val_data_path or a held-out val_size share, and the best checkpoint."""

import json

import pytest
import torch

from xtune.dataset import SFTDataset
from xtune.dataset.collate import count_trained_tokens, sft_collate_fn
from xtune.paths import MODEL_DIR
from xtune.testing.training import train

TOKENIZER = str(MODEL_DIR / "tiny_llama")
RUN = {"max_epochs": 1, "evaluation_inputs": [], "save_steps": 10**6, "dtype": "fp32", "log_interval": 100}
RUN |= {"data_path": [{"path": "identity", "max_samples": 32}], "pack_to_max_length": False, "batch_size": 8}


def test_held_out_share_is_disjoint_seeded_and_complete():
    kwargs = {"max_length": 256, "pack_to_max_length": False, "placeholders": {"name": "B", "author": "T"}}
    whole = SFTDataset("identity", TOKENIZER, **kwargs)
    train_part = SFTDataset("identity", TOKENIZER, val_size=0.25, **kwargs)
    val_part = SFTDataset("identity", TOKENIZER, val_size=0.25, part="val", **kwargs)
    assert len(val_part) == round(len(whole) * 0.25)
    assert sorted(train_part.valid.tolist() + val_part.valid.tolist()) == whole.valid.tolist()
    assert (
        val_part.valid.tolist() == SFTDataset("identity", TOKENIZER, val_size=0.25, part="val", **kwargs).valid.tolist()
    )


def test_validation_loss_is_logged_every_eval_steps_and_the_best_weights_kept(tmp_path):
    options = {**RUN, "val_size": 0.25, "eval_steps": 1, "save_best": True}
    assert train("tiny_llama_lora_identity_e3", tmp_path, options) == 0
    history = json.loads((tmp_path / "val_loss.json").read_text())
    assert history["iter"] == [1, 2, 3]  # 24 training rows, 8 a batch: after each step, the last at the end
    assert all(loss > 0 for loss in history["loss"])
    (scalars,) = tmp_path.rglob("scalars.json")
    logged = [json.loads(line)["val/loss"] for line in scalars.read_text().splitlines() if "val/loss" in line]
    assert logged == pytest.approx(history["loss"])
    best = torch.load(tmp_path / "best_checkpoint.pth", map_location="cpu", weights_only=False)
    assert best["meta"]["val_iter"] == history["iter"][history["loss"].index(min(history["loss"]))]
    assert best["meta"]["val_loss"] == min(history["loss"])


def test_validation_loss_equals_a_plain_token_average(tmp_path):
    # lr=1e-30 keeps the weights (lr=0 is refused as a run that cannot train): the logged loss must be
    # plain transformers' summed token loss over the
    # validation rows divided by their trained tokens.
    from transformers import AutoModelForCausalLM

    options = {**RUN, "val_data_path": "alpaca_demo", "max_length": 128, "lr": 1e-30}
    assert train("tiny_llama_full_identity_e3", tmp_path, options) == 0
    logged = json.loads((tmp_path / "val_loss.json").read_text())["loss"][-1]
    model = AutoModelForCausalLM.from_pretrained(TOKENIZER, dtype=torch.float32).eval()
    val = SFTDataset("alpaca_demo", TOKENIZER, max_length=128, pack_to_max_length=False)
    total, tokens = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(val), 8):
            batch = sft_collate_fn([val[j] for j in range(i, min(i + 8, len(val)))])
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1), reduction="sum"
            )
            total, tokens = total + float(loss), tokens + count_trained_tokens(batch["labels"])
    assert logged == pytest.approx(total / tokens, rel=1e-4)


def test_every_rank_takes_rank_0s_loss_so_they_agree_on_saving_the_best(monkeypatch, tmp_path):
    """Ranks whose own losses round differently still decide alike: the hook uses the broadcast loss."""
    from types import SimpleNamespace

    from xtune.engine.hooks import validation
    from xtune.engine.hooks.validation import ValidationHook

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(1))

        def forward(self, labels, loss_scale, mode, **_):
            return {"loss": self.weight * 2.0 * labels.numel()}  # 2.0 a token on this rank

    broadcasts = []

    def broadcast(tensor, src):
        broadcasts.append(src)
        tensor.fill_(0.5)  # rank 0 saw 0.5 a token

    monkeypatch.setattr(validation, "is_distributed", lambda: True)
    monkeypatch.setattr(validation, "broadcast", broadcast)
    saved = []
    runner = SimpleNamespace(
        model=Model(), rank=1, work_dir=str(tmp_path),
        message_hub=SimpleNamespace(update_scalar=lambda *a: None),
        visualizer=SimpleNamespace(add_scalars=lambda *a, **k: None),
        logger=SimpleNamespace(info=lambda *a: None),
        save_checkpoint=lambda *a, **k: saved.append(k["meta"]),
    )  # fmt: skip
    hook = ValidationHook(val_size=0.1, save_best=True)
    hook.best = 1.0  # this rank's own 2.0 would not be a new best; rank 0's 0.5 is
    hook.loader = [{"labels": torch.ones(1, 4, dtype=torch.long), "num_tokens": torch.tensor([4])}]
    hook._validate(runner, step=3)
    assert broadcasts == [0] and hook.history["loss"] == [0.5]
    assert saved == [{"val_loss": 0.5, "val_iter": 3}]
