"""DPO trains exactly what a plain PyTorch DPO loop with a frozen reference copy trains; the reference
equals the policy at step 1; resume restores the reference; a demo run learns the preferences.

All runs: fp32 CPU, constant lr, no clipping, file order (PARITY_OPTIONS).
"""

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from xtune.paths import DATASET_INFO, MODEL_DIR
from xtune.stages.data import PreferenceDataset, pair_collate_fn
from xtune.stages.preference import sequence_logps
from xtune.testing.training import PARITY_OPTIONS, final_weights, max_difference, train

pytestmark = pytest.mark.slow

FULL = "tiny_llama_full_dpo_preference_e3"
LORA = "tiny_llama_lora_dpo_preference_e3"
BETA = 0.1


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> Path:
    """8 demo pairs: batch 2 x accumulate 2 gives 2 optimizer steps per epoch."""
    rows = json.loads((DATASET_INFO.parent / "preference_demo.json").read_text())[:8]
    path = tmp_path_factory.mktemp("pairs") / "pairs8.json"
    path.write_text(json.dumps(rows))
    return path


def _options(model, data, **extra) -> dict:
    return {
        **PARITY_OPTIONS,
        "pretrained_model_name_or_path": str(model),
        "data_path": str(data),
        "data_format": "alpaca",
        "max_length": 256,
        "batch_size": 2,
        "accumulative_counts": 2,
        "max_epochs": 1,
        "pref_beta": BETA,
        **extra,
    }


def _plain_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sequence log-probs written independently: minus the per-token cross-entropy, summed over the reply."""
    nll = F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), labels[:, 1:], ignore_index=-100, reduction="none")
    return -nll.sum(-1)


def _batches(model, data) -> list[dict]:
    dataset = PreferenceDataset(str(data), str(model), data_format="alpaca", max_length=256)
    return [pair_collate_fn([dataset[i], dataset[i + 1]]) for i in range(0, len(dataset), 2)]


def _plain_dpo(policy, reference_logps, batches, lr: float, accumulate: int) -> list[float]:
    """Plain DPO: per step, the mean over the step's pairs of -log σ(β h)."""
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    margins = []
    for start in range(0, len(batches), accumulate):
        group = batches[start : start + accumulate]
        pairs = sum(len(b["index"]) for b in group)
        for batch in group:
            logps = _plain_logps(
                policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, batch["labels"]
            )
            with torch.no_grad():
                reference = reference_logps(batch)
            n = len(batch["index"])
            h = (logps[:n] - logps[n:]) - (reference[:n] - reference[n:])
            (-F.logsigmoid(BETA * h).sum() / pairs).backward()
            margins.append(float((BETA * h).mean()))
        optimizer.step()
        optimizer.zero_grad()
    return margins


def _scalars(work: Path) -> list[dict]:
    return [json.loads(line) for line in next(work.glob("*/vis_data/scalars.json")).read_text().splitlines()]


def test_sequence_logps_equal_a_plain_forward_of_each_row(tiny_llama, pairs_file):
    from xtune.model import FinetuneModel

    model = FinetuneModel(str(tiny_llama), finetune_type="full", dtype="fp32", objective={"type": "dpo"})
    plain = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    batch = _batches(tiny_llama, pairs_file)[0]
    ours, counts = sequence_logps(model, batch)
    for row in range(batch["input_ids"].shape[0]):
        real = int(batch["attention_mask"][row].sum())
        ids, labels = batch["input_ids"][row : row + 1, :real], batch["labels"][row : row + 1, :real]
        logits = plain(input_ids=ids).logits  # the row alone, unpadded
        log_probs = torch.log_softmax(logits[0, :-1].float(), -1)
        expected = sum(float(log_probs[t, labels[0, t + 1]]) for t in range(real - 1) if labels[0, t + 1] != -100)
        assert float(ours[row]) == pytest.approx(expected, abs=1e-4)
        assert int(counts[row]) == int((labels[0, 1:] != -100).sum())


def test_full_dpo_matches_a_plain_loop_with_a_frozen_reference_copy(tiny_llama, pairs_file, tmp_path):
    assert train(FULL, tmp_path, _options(tiny_llama, pairs_file, lr=1e-3)) == 0
    ours = final_weights(tmp_path)
    policy = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    frozen = copy.deepcopy(policy).eval()
    margins = _plain_dpo(
        policy,
        lambda b: _plain_logps(
            frozen(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits, b["labels"]
        ),
        _batches(tiny_llama, pairs_file),
        lr=1e-3,
        accumulate=2,
    )
    assert max_difference(ours, policy.state_dict()) < 1e-4
    assert max_difference(ours, before) > 1e-4  # training moved the weights
    logged = _scalars(tmp_path)
    # step 1: the policy is the reference, so every reward and margin is 0
    assert logged[0]["rewards/chosen"] == pytest.approx(0, abs=1e-5)
    assert logged[0]["rewards/margins"] == pytest.approx(0, abs=1e-5)
    assert logged[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # log 2: -log σ(0)
    assert [row["rewards/margins"] for row in logged] == pytest.approx(margins, abs=1e-4)
    for key in ("rewards/rejected", "rewards/accuracies", "logps/chosen", "logps/rejected"):
        assert key in logged[-1]


def test_lora_dpo_matches_plain_peft_with_adapters_disabled_as_reference(tiny_llama, pairs_file, tmp_path):
    import xtune.engine  # noqa: F401
    from xtune.cli import build_parser
    from xtune.cli.train import prepare_config
    from xtune.registry import RUNNERS
    from xtune.testing.training import cfg_options

    options = _options(tiny_llama, pairs_file, lr=1e-2)
    args = build_parser().parse_args(
        ["train", LORA, "--work-dir", str(tmp_path), "--cfg-options", *cfg_options(options)]
    )
    runner = RUNNERS.build(prepare_config(args))
    initial = {k[len("llm.") :]: v.clone() for k, v in runner.model.state_dict().items()}
    runner.train()
    ours = final_weights(tmp_path)

    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    lora = LoraConfig(task_type="CAUSAL_LM", r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear")
    plain = get_peft_model(base, lora)
    plain.load_state_dict(initial, strict=False)

    def reference(batch):
        with plain.disable_adapter():
            return _plain_logps(
                plain(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, batch["labels"]
            )

    _plain_dpo(plain, reference, _batches(tiny_llama, pairs_file), lr=1e-2, accumulate=2)
    expected = {k: v for k, v in plain.state_dict().items() if "lora_" in k}
    assert set(ours) == set(expected)
    assert max_difference(ours, expected) < 1e-4
    assert max_difference(ours, initial) > 1e-3


def test_resume_restores_the_reference_and_ends_on_the_same_weights(tiny_llama, pairs_file, tmp_path):
    options = _options(tiny_llama, pairs_file, lr=1e-3, max_epochs=2, save_steps=1, save_total_limit=-1)
    straight = tmp_path / "straight"
    assert train(FULL, straight, options) == 0
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copy(straight / "iter_4.pth", resumed / "iter_4.pth")  # 2 of 4 steps done
    (resumed / "last_checkpoint").write_text(str(resumed / "iter_4.pth"))
    assert train(FULL, resumed, options, extra_args=["--resume", "auto"]) == 0
    assert max_difference(final_weights(straight), final_weights(resumed)) < 1e-6
    log = next(resumed.glob("*/*.log")).read_text()
    assert "reference log-probs: restored from the checkpoint" in log


def test_a_tiny_dpo_run_on_the_demo_pairs_learns_them(tmp_path):
    options = {"log_interval": 1, "max_epochs": 2, "save_steps": 10**6, "evaluation_inputs": []}
    assert train(LORA, tmp_path, options) == 0
    logged = _scalars(tmp_path)
    assert len(logged) == 12  # 24 pairs / batch 4 x 2 epochs
    late = logged[-3:]
    assert min(row["rewards/accuracies"] for row in late) > 0.9
    first, last = logged[0]["rewards/margins"], sum(row["rewards/margins"] for row in late) / 3
    assert abs(first) < 1e-5 and last > 0.5
    # the DPO adapter converts like an SFT one and loads in plain peft
    from peft import PeftModel

    from xtune.convert.pth_to_hf import pth_to_hf

    checkpoint = (tmp_path / "last_checkpoint").read_text().strip()
    adapter = pth_to_hf(tmp_path / f"{LORA}.py", checkpoint, tmp_path / "hf")
    base = AutoModelForCausalLM.from_pretrained(MODEL_DIR / "tiny_llama", dtype=torch.float32)
    loaded = PeftModel.from_pretrained(base, str(adapter))
    trained = final_weights(tmp_path)
    name = next(k for k in trained if "lora_B" in k)
    assert max_difference({name: trained[name]}, {name: loaded.state_dict()[name]}) < 1e-6


def test_full_kto_matches_a_plain_loop_with_a_frozen_reference_copy(tiny_llama, tmp_path):
    from xtune.stages.data import KTODataset, kto_collate_fn

    rows = json.loads((DATASET_INFO.parent / "kto_demo.json").read_text())[:8]
    data = tmp_path / "kto8.json"
    data.write_text(json.dumps(rows))
    options = _options(tiny_llama, data, lr=1e-3, accumulative_counts=1, kto_chosen_weight=1.5)
    assert train("tiny_llama_lora_kto_kto_demo_e3", tmp_path / "run", {**options, "model.finetune_type": "full"}) == 0
    ours = final_weights(tmp_path / "run")

    policy = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    frozen = copy.deepcopy(policy).eval()
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-3, weight_decay=0.0)
    dataset = KTODataset(str(data), str(tiny_llama), data_format="alpaca", max_length=256)
    for start in range(0, len(dataset), 2):
        batch = kto_collate_fn([dataset[start], dataset[start + 1]])
        logps = _plain_logps(
            policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, batch["labels"]
        )
        with torch.no_grad():
            ref = _plain_logps(
                frozen(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, batch["labels"]
            )
        kl = (logps[2:] - ref[2:]).mean().clamp(min=0).detach()  # the mismatched completions
        ratio = logps[:2] - ref[:2]
        losses = [
            1.5 * (1 - torch.sigmoid(BETA * (ratio[i] - kl)))
            if batch["kto_label"][i]
            else 1 - torch.sigmoid(BETA * (kl - ratio[i]))
            for i in range(2)
        ]
        (sum(losses) / 2).backward()
        optimizer.step()
        optimizer.zero_grad()
    assert max_difference(ours, policy.state_dict()) < 1e-4
    assert max_difference(ours, frozen.state_dict()) > 1e-4  # training moved the weights
