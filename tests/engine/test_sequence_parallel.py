"""Ulysses sequence parallelism on CPU ranks (gloo) trains exactly what data parallelism trains.

Every run is compared with one process that sees the same samples per micro-batch (PARITY_OPTIONS: fp32,
file order, plain SGD so the weights measure the gradients). Launches are few and combined, as 2-4 CPU
ranks on 2 cores are slow: 2 ranks with s=2 (LoRA, unpacked rows of odd widths) also saves every step
for the resume test; 4 ranks with s=2 (data-parallel size 2, full, packed); 2 ranks with s=2 under
DeepSpeed ZeRO-2 and ZeRO-3 with activation offload (so checkpointed layers recompute through the
all-to-alls; full, packed); 2 ranks with s=2 for LoRA packed and full unpacked; DPO and RM with LoRA;
and one resumed run.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch

from xtune.model.sequence_parallel import shard_batch
from xtune.testing.training import (
    final_weights,
    max_relative_difference,
    sgd_parity_options,
    train,
    train_ranks,
)

FULL = "tiny_llama_full_identity_e3"
LORA = "tiny_llama_lora_identity_e3"


_options = sgd_parity_options


class Runs:
    """Runs made on first use and shared by this module's tests."""

    def __init__(self, root: Path, model: Path, data: Path) -> None:
        self.root, self.model, self.data = root, model, data
        self.done: dict[str, Path] = {}

    def single(self, config: str, packed: bool) -> Path:
        work = self.root / f"single_{config}_{packed}"
        if work.name not in self.done:
            assert train(config, work, _options(self.model, self.data, packed)) == 0
            self.done[work.name] = work
        return work

    def parallel(self, name: str, config: str, packed: bool, ranks: int, extra_args=(), **options) -> Path:
        work = self.root / name
        if name not in self.done:
            train_ranks(config, work, _options(self.model, self.data, packed, **options), list(extra_args), ranks=ranks)
            self.done[name] = work
        return work

    def lora_unpacked(self) -> Path:
        # every optimizer step saved: the resume test starts from one of them
        return self.parallel(
            "sp2_lora_unpacked", LORA, False, 2, sequence_parallel_size=2, save_steps=1, save_total_limit=-1
        )


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_llama, alpaca_file) -> Runs:
    return Runs(tmp_path_factory.mktemp("sp"), tiny_llama, alpaca_file)


def _reported(what: str, difference: float) -> float:
    print(f"sequence parallel parity, {what}: max relative difference {difference:.2e}")  # shown with -s
    return difference


def _moved(weights: dict, model: Path) -> float:
    from safetensors.torch import load_file

    initial = load_file(next(model.glob("*.safetensors")))
    return max(float((weights[key] - initial[key]).abs().max()) for key in initial if key in weights)


@pytest.mark.slow
def test_two_ranks_sharing_each_sequence_equal_one_process_lora_unpacked(runs):
    ours, reference = final_weights(runs.lora_unpacked()), final_weights(runs.single(LORA, False))
    assert set(ours) == set(reference) and all("lora_" in key for key in ours)
    assert _reported("2 ranks s=2, LoRA, unpacked", max_relative_difference(ours, reference)) < 1e-5
    assert max(float(v.abs().max()) for k, v in ours.items() if "lora_B" in k) > 1e-3  # training moved them
    # the logged loss is the group's mean: what one process logs for the same rows
    logged = json.loads((runs.lora_unpacked() / "loss.json").read_text())["loss"]
    assert logged == pytest.approx(json.loads((runs.single(LORA, False) / "loss.json").read_text())["loss"], rel=1e-4)
    # a checkpoint trained under sequence parallelism converts in one process
    from safetensors.torch import load_file

    from xtune.convert.pth_to_hf import pth_to_hf

    work = runs.lora_unpacked()
    saved = pth_to_hf(work / f"{LORA}.py", (work / "last_checkpoint").read_text().strip(), runs.root / "hf")
    adapter = load_file(saved / "adapter_model.safetensors")
    assert {k.replace(".weight", ".default.weight"): v for k, v in adapter.items()}.keys() == ours.keys()


@pytest.mark.slow
@pytest.mark.parametrize("config,packed", [(LORA, True), (FULL, False)], ids=["lora_packed", "full_unpacked"])
def test_two_ranks_sharing_each_sequence_equal_one_process_other_cases(runs, config, packed):
    """The two cases the other launches leave out, with 2 ranks and s=2 against one process."""
    name = f"sp2_{'lora' if config == LORA else 'full'}_{'packed' if packed else 'unpacked'}"
    ours = final_weights(runs.parallel(name, config, packed, 2, sequence_parallel_size=2))
    reference = final_weights(runs.single(config, packed))
    assert set(ours) == set(reference)
    assert _reported(f"2 ranks s=2, {name[4:]}", max_relative_difference(ours, reference)) < 1e-5
    changed = {k: v for k, v in ours.items() if "lora_B" in k} if config == LORA else None
    assert (max(float(v.abs().max()) for v in changed.values()) if changed else _moved(ours, runs.model)) > 1e-3


@pytest.mark.slow
def test_four_ranks_two_groups_equal_data_parallel_full_packed(runs):
    # batch 1 on each of 2 data-parallel groups = 2 rows per micro-batch, as the single process with batch 2
    ours = final_weights(runs.parallel("sp2_dp2_full_packed", FULL, True, 4, batch_size=1, sequence_parallel_size=2))
    reference = final_weights(runs.single(FULL, True))
    assert _reported("4 ranks s=2 (DP 2), full, packed", max_relative_difference(ours, reference)) < 1e-5
    assert _moved(ours, runs.model) > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_deepspeed_with_sequence_parallel_equals_one_process_full_packed(runs, stage):
    # with activation_offload (checkpointing on): the all-to-alls run again in the recompute
    options = {"sequence_parallel_size": 2, "activation_offload": True}
    work = runs.parallel(f"sp2_{stage}_full_packed", FULL, True, 2, ["--deepspeed", stage], **options)
    from xtune.convert.zero import load_zero_checkpoint

    ours = {
        k.removeprefix("llm."): v
        for k, v in load_zero_checkpoint((work / "last_checkpoint").read_text().strip()).items()
    }
    reference = final_weights(runs.single(FULL, True))
    what = f"2 ranks s=2 {stage} + activation offload, full, packed"
    assert _reported(what, max_relative_difference(ours, reference)) < 1e-5


@pytest.mark.slow
def test_resume_under_sequence_parallel_ends_on_the_same_weights(runs):
    straight = runs.lora_unpacked()
    work = runs.root / "sp2_resumed"
    shutil.copytree(straight, work, ignore=shutil.ignore_patterns("iter_[5-9]*.pth", "iter_1[0-9].pth", "*.log"))
    (work / "last_checkpoint").write_text(str(work / "iter_4.pth"))
    options = _options(runs.model, runs.data, False, sequence_parallel_size=2, save_steps=1, save_total_limit=-1)
    result = train_ranks(LORA, work, options, ["--resume", "auto"], ranks=2)
    assert "resuming: skipping the 4 micro-batches already trained" in result.stdout
    difference = max_relative_difference(final_weights(work), final_weights(straight))
    assert _reported("resumed at iteration 4 vs straight", difference) < 1e-6


@pytest.mark.slow
def test_dpo_with_sequence_parallel_equals_one_process(tiny_llama, tmp_path):
    """Pairs split over 2 ranks: each rank sums its slice of every row's log-probs, the group adds them
    (with a gradient), and the reference log-probs come from whole rows."""
    from xtune.paths import DATA_DIR

    rows = json.loads((DATA_DIR / "preference_demo.json").read_text())[:8]
    data = tmp_path / "pairs8.json"
    data.write_text(json.dumps(rows))
    options = {**_options(tiny_llama, data, False, batch_size=2), "lr": 1e-3, "max_epochs": 1}
    options.pop("optim_wrapper.optimizer")
    options["optim_wrapper.optimizer"] = {"_delete_": True, "type": "SGD", "lr": 0.5}
    config = "tiny_llama_lora_dpo_preference_e3"
    assert train(config, tmp_path / "single", options) == 0
    train_ranks(config, tmp_path / "sp", {**options, "sequence_parallel_size": 2}, ranks=2)
    ours, reference = final_weights(tmp_path / "sp"), final_weights(tmp_path / "single")
    assert _reported("2 ranks s=2, DPO, LoRA", max_relative_difference(ours, reference)) < 1e-5
    assert max(float(v.abs().max()) for k, v in ours.items() if "lora_B" in k) > 1e-4  # training moved them
    # each pair counted once per group: the logged loss is that of the same pairs in one process
    logged = json.loads((tmp_path / "sp" / "loss.json").read_text())["loss"]
    assert logged == pytest.approx(json.loads((tmp_path / "single" / "loss.json").read_text())["loss"], rel=1e-4)


@pytest.mark.slow
def test_reward_model_with_sequence_parallel_equals_one_process(tiny_llama, tmp_path):
    """Each row's score is read on the rank whose slice holds its last real token; the group sums them."""
    from xtune.paths import DATA_DIR

    rows = json.loads((DATA_DIR / "preference_demo.json").read_text())[:8]
    data = tmp_path / "pairs8.json"
    data.write_text(json.dumps(rows))
    options = {**_options(tiny_llama, data, False, batch_size=2), "max_epochs": 1}
    options["optim_wrapper.optimizer"] = {"_delete_": True, "type": "SGD", "lr": 0.5}
    config = "tiny_llama_lora_rm_preference_e3"
    assert train(config, tmp_path / "single", options) == 0
    train_ranks(config, tmp_path / "sp", {**options, "sequence_parallel_size": 2}, ranks=2)
    ours, reference = final_weights(tmp_path / "sp"), final_weights(tmp_path / "single")
    assert set(ours) == set(reference) and any("score" in key for key in ours)
    assert _reported("2 ranks s=2, RM, LoRA", max_relative_difference(ours, reference)) < 1e-5
    assert max(float(v.abs().max()) for k, v in ours.items() if "lora_B" in k) > 1e-4  # training moved them
    logged = json.loads((tmp_path / "sp" / "loss.json").read_text())["loss"]
    assert logged == pytest.approx(json.loads((tmp_path / "single" / "loss.json").read_text())["loss"], rel=1e-4)


# ----------------------------------------------------------------------------------------- in-process
def test_shards_put_back_together_are_the_batch_shifted():
    from xtune.dataset.collate import sft_collate_fn

    items = [
        {"input_ids": [5, 6, 7, 8, 9], "labels": [-100, 6, 7, -100, 9], "position_ids": [0, 1, 2, 0, 1]},
        {"input_ids": [3, 4, 5], "labels": [-100, 4, 5], "position_ids": [0, 1, 2]},
    ]
    batch = sft_collate_fn(items)  # width 5: padded to 6 for 2 ranks, 6 for 3
    for size in (2, 3):
        shards = [shard_batch(batch, rank, size) for rank in range(size)]
        ids = torch.cat([s["input_ids"] for s in shards], dim=1)
        targets = torch.cat([s["shift_labels"] for s in shards], dim=1)
        positions = torch.cat([s["position_ids"] for s in shards], dim=1)
        assert ids.shape == (2, 6) and torch.equal(ids[:, :5], batch["input_ids"])
        # each position's target is the next token's label, across shard boundaries
        assert targets[0].tolist() == [6, 7, -100, 9, -100, -100]
        assert targets[1].tolist() == [4, 5, -100, -100, -100, -100]
        assert positions[0].tolist() == [0, 1, 2, 0, 1, 0]  # the pad tail after a full row is its own segment
        assert positions[1].tolist() == [0, 1, 2, 0, 1, 2]
        # the boundaries of the whole (padded) rows: samples 3 + 2 (+ pad 1), 3 (+ pad 3)
        assert shards[0]["cu_seq_lens"].tolist() == [0, 3, 5, 6, 9, 12]
        assert all(torch.equal(s["cu_seq_lens"], shards[0]["cu_seq_lens"]) for s in shards)
        assert sum(int(s["num_tokens"].sum()) for s in shards) == 8
        assert "labels" not in shards[0]
        # each row's last real token (index 4 and 2) is in exactly one slice, where the rm stage reads it
        owner = [[rank for rank, s in enumerate(shards) if s["ends_here"][row]] for row in range(2)]
        assert owner == ([[1], [0]] if size == 2 else [[2], [1]])


def test_unpacked_rows_get_positions_and_segments():
    from xtune.dataset.collate import sft_collate_fn

    batch = sft_collate_fn([{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}, {"input_ids": [4], "labels": [4]}])
    shard = shard_batch(batch, 1, 2)
    assert "attention_mask" not in shard
    assert shard["position_ids"].tolist() == [[2, 0], [1, 2]]  # row 2: one token, then padding from 0
    assert shard["cu_seq_lens"].tolist() == [0, 3, 4, 5, 8]


def test_errors_name_the_knob_and_the_fix(tiny_llama, monkeypatch):
    from transformers import AutoModelForCausalLM

    from xtune.errors import ConfigError
    from xtune.model.sequence_parallel import check_model, data_parallel_info

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)  # 4 heads, 2 KV heads
    with pytest.raises(ConfigError, match=r"sequence_parallel_size=3 must divide the model's attention heads, 4"):
        check_model(model, 3, "auto")
    model.config.num_key_value_heads = 3
    model.config.num_attention_heads = 12
    with pytest.raises(ConfigError, match=r"sequence_parallel_size=2 and the model's 3 key/value heads"):
        check_model(model, 2, "auto")
    model.config.num_key_value_heads, model.config.num_attention_heads = 2, 4
    assert check_model(model, 4, "auto") == "xtune_varlen"  # 2 KV heads copied to 4 ranks
    with pytest.raises(ConfigError, match=r"attn_implementation='sdpa'.*Set attn_implementation to 'auto'"):
        check_model(model, 2, "sdpa")
    monkeypatch.setattr("xtune.model.attention.uses_attention_interface", lambda m: False)
    with pytest.raises(ConfigError, match=r"runs its own attention code.*Set sequence_parallel_size=1"):
        check_model(model, 2, "auto")
    monkeypatch.setattr("mmengine.dist.get_dist_info", lambda: (0, 3))
    with pytest.raises(ConfigError, match=r"sequence_parallel_size=2 must divide the number of ranks, which is 3"):
        data_parallel_info(2)


def test_one_process_refuses_sequence_parallel(tiny_llama, alpaca_file, tmp_path, capsys):
    status = train(LORA, tmp_path / "w", _options(tiny_llama, alpaca_file, False, sequence_parallel_size=2))
    assert status == 2
    assert "sequence_parallel_size=2 must divide the number of ranks, which is 1" in capsys.readouterr().err
