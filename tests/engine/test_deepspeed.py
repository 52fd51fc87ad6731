"""DeepSpeed ZeRO on 2 CPU ranks trains exactly what one process trains, and its checkpoints resume and
convert.

Every 2-rank run is ``NPROC_PER_NODE=2 xtune train ... --deepspeed ...`` in a subprocess (torchrun,
gloo). 2 ranks x batch 2 and 1 process x batch 4 see the same 4 samples per micro-batch (the sampler
gives rank r the samples r, r+2, ...) and the loss is normalised by the step's token count, so the
weights, converted by ``xtune convert pth_to_hf`` from the ZeRO folder, must agree. 3 micro-batches per
step over 8 iterations leaves a shorter last step (3, 3, 2), which checks the loss factor under
DeepSpeed's own accumulation. Runs are shared between tests (about 2-3.5 minutes on 2 CPU cores).
"""

import json
import os
import pickle
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from xtune.cli import build_parser, main
from xtune.cli.workers import process_tree
from xtune.convert.zero import is_zero_checkpoint, load_deepspeed_file, load_zero_checkpoint
from xtune.engine.deepspeed import PRESETS, find_deepspeed_config, read_deepspeed_config, resolve_deepspeed_config
from xtune.errors import CheckpointError, ConfigError
from xtune.testing.training import (
    PARITY_OPTIONS,
    cfg_options,
    final_weights,
    max_difference,
    rank_command,
    rank_env,
    train,
    train_ranks,
)

FULL = "tiny_llama_full_identity_e3"
LORA = "tiny_llama_lora_identity_e3"
RANKS = 2
ITERS = 8  # 16 rows / (2 ranks x batch 2) = 4 iterations per epoch, 2 epochs


def _options(model, data, batch_size: int, **extra) -> dict:
    return {
        **PARITY_OPTIONS,
        "pretrained_model_name_or_path": str(model),
        "data_path": str(data),
        "data_format": "alpaca",
        "max_length": 512,
        "batch_size": batch_size,
        "accumulative_counts": 3,
        "lr": 1e-3,
        "max_epochs": 2,
        **extra,
    }


def _run_ranks(config: str, work: Path, deepspeed: str, options: dict, *extra: str) -> subprocess.CompletedProcess:
    return train_ranks(config, work, options, ["--deepspeed", deepspeed, *extra], ranks=RANKS)


def _zero_weights(work: Path) -> dict[str, torch.Tensor]:
    """The newest checkpoint's fp32 weights, from the ZeRO reader."""
    folder = Path((work / "last_checkpoint").read_text().strip())
    assert is_zero_checkpoint(folder)
    return {key.removeprefix("llm."): value for key, value in load_zero_checkpoint(folder).items()}


def _converted_weights(work: Path, config: str) -> dict[str, torch.Tensor]:
    """The newest checkpoint through `xtune convert pth_to_hf`, keyed like :func:`final_weights`."""
    from xtune.convert.pth_to_hf import pth_to_hf

    folder = Path((work / "last_checkpoint").read_text().strip())
    saved = pth_to_hf(work / f"{config}.py", folder, work / "hf")  # the resolved config the run wrote
    if config == LORA:  # a PEFT adapter names its weights without the adapter name
        adapter = load_file(saved / "adapter_model.safetensors")
        return {key.replace(".weight", ".default.weight"): value for key, value in adapter.items()}
    return load_file(saved / "model.safetensors")


class Runs:
    """Training runs made on first use and shared by the tests of this module."""

    def __init__(self, root: Path, model: Path, data: Path) -> None:
        self.root, self.model, self.data = root, model, data
        self.results: dict[str, subprocess.CompletedProcess | None] = {}

    def single(self, config: str) -> Path:
        work = self.root / f"single_{config}"
        if config not in self.results:
            assert train(config, work, _options(self.model, self.data, batch_size=2 * RANKS)) == 0
            self.results[config] = None
        return work

    def ranks(self, config: str, deepspeed: str, **extra) -> tuple[Path, subprocess.CompletedProcess]:
        key = f"{config}_{Path(deepspeed).stem}"
        work = self.root / key
        if key not in self.results:
            options = _options(self.model, self.data, batch_size=2, **extra)
            self.results[key] = _run_ranks(config, work, deepspeed, options)
        return work, self.results[key]

    def user_json(self) -> Path:
        """zero2 with values that contradict the config and an optimizer section: all must lose."""
        path = self.root / "user_zero2.json"
        path.write_text(
            json.dumps(
                {
                    "train_micro_batch_size_per_gpu": 16,
                    "gradient_accumulation_steps": 8,
                    "gradient_clipping": 1.0,
                    "bf16": {"enabled": True},
                    "optimizer": {"type": "Adam", "params": {"lr": 0.1}},
                    "zero_optimization": {"stage": 2, "reduce_bucket_size": "auto"},
                }
            )
        )
        return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_llama, alpaca_file) -> Runs:
    return Runs(tmp_path_factory.mktemp("deepspeed"), tiny_llama, alpaca_file)


# ----------------------------------------------------------------------------------------- 2-rank parity
@pytest.mark.parametrize(
    ("config", "deepspeed"),
    [(FULL, "user_json"), (FULL, "zero3"), (LORA, "deepspeed_zero2"), (LORA, "zero3")],
    ids=["full-zero2-user-json", "full-zero3", "lora-zero2", "lora-zero3"],
)
def test_two_ranks_equal_one_process_with_twice_the_batch(runs, config, deepspeed):
    if deepspeed == "user_json":
        deepspeed = str(runs.user_json())
    # zero3 full keeps every checkpoint: the resume test starts from the first one
    extra = {"save_steps": 1, "save_total_limit": -1} if (config, deepspeed) == (FULL, "zero3") else {}
    work, result = runs.ranks(config, deepspeed, **extra)
    reference = final_weights(runs.single(config))
    ours = _converted_weights(work, config)
    assert set(ours) == set(reference)
    assert max_difference(reference, ours) < 1e-4
    if config == LORA:
        assert all("lora_" in key for key in ours)  # frozen base weights are not in the checkpoint
        # LoRA's B matrices start at zero: training moved them, so the comparison means something
        assert max(float(value.abs().max()) for key, value in ours.items() if "lora_B" in key) > 1e-3
    else:
        before = AutoModelForCausalLM.from_pretrained(runs.model, dtype=torch.float32).state_dict()
        assert max_difference(ours, before) > 1e-3  # training moved the weights: the comparison means something
    newest = Path((work / "last_checkpoint").read_text().strip())
    assert newest.name == f"iter_{ITERS}.pth" and newest.is_dir()
    assert len(list(newest.glob("*optim_states.pt"))) == RANKS
    assert not list(work.glob("*.tmp"))  # every folder was renamed into place
    if deepspeed.endswith("user_zero2.json"):
        notes = [line for line in result.stderr.splitlines() if line.startswith("xtune: deepspeed:")]
        assert len(notes) == 5, result.stderr[-3000:]  # once (rank 0), one line per conflict
        for knob in ("gradient_accumulation_steps=8", "train_micro_batch_size_per_gpu=16", "gradient_clipping=1.0"):
            assert any(knob in note for note in notes)
        assert any("bf16.enabled=True" in note for note in notes)
        assert any("'optimizer' section" in note for note in notes)


# ----------------------------------------------------------------------------------------- resume
def test_resume_from_a_two_rank_zero3_checkpoint_ends_on_the_same_weights(runs, tmp_path):
    straight, _ = runs.ranks(FULL, "zero3", save_steps=1, save_total_limit=-1)
    first = straight / "iter_3.pth"  # after the first optimizer step, mid-epoch
    assert first.is_dir()
    work = tmp_path / "resumed"
    work.mkdir()
    shutil.copytree(first, work / first.name)
    options = _options(runs.model, runs.data, batch_size=2, save_steps=1, save_total_limit=-1)
    result = _run_ranks(FULL, work, "zero3", options, "--resume", "auto")
    assert "resumed epoch: 0, iter: 3" in result.stdout + result.stderr
    assert max_difference(_zero_weights(straight), _zero_weights(work)) < 1e-6


# ----------------------------------------------------------------------------------------- configs
def _cfg(tiny_llama, alpaca_file, *extra: str, **options):
    from xtune.cli.train import prepare_config

    argv = ["train", FULL, "--work-dir", "unused", *extra]
    args = build_parser().parse_args(
        argv + ["--cfg-options", *cfg_options(_options(tiny_llama, alpaca_file, **options))]
    )
    return prepare_config(args)


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_resolves_without_auto_values(tiny_llama, alpaca_file, name):
    cfg = _cfg(tiny_llama, alpaca_file, batch_size=2, max_norm=0.5)
    assert find_deepspeed_config(f"deepspeed_{name}") == find_deepspeed_config(name)  # XTuner's spelling
    shipped = read_deepspeed_config(find_deepspeed_config(name))
    assert "auto" in json.dumps(shipped)
    ds, notes = resolve_deepspeed_config(shipped, cfg)
    assert notes == []  # the shipped presets leave every config value to the config
    assert "auto" not in json.dumps(ds)
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (2, 3)
    assert ds["gradient_clipping"] == 0.5
    assert ds["bf16"]["enabled"] is False and ds["fp16"]["enabled"] is False  # fp32 on this CPU
    assert ds["zero_force_ds_cpu_optimizer"] is False  # a torch optimizer is always handed to DeepSpeed
    assert ds["zero_optimization"]["stage"] == int(name[4])


def test_conflicting_json_values_are_reported_and_the_config_wins(tiny_llama, alpaca_file, tmp_path):
    cfg = _cfg(tiny_llama, alpaca_file, batch_size=2, dtype="bf16")
    user = {"gradient_accumulation_steps": 4, "bf16": {"enabled": False}, "fp16": {"enabled": True}}
    ds, notes = resolve_deepspeed_config(user, cfg, "my.json")
    assert ds["gradient_accumulation_steps"] == 3 and ds["bf16"]["enabled"] is True and ds["fp16"]["enabled"] is False
    assert notes == [
        "my.json sets gradient_accumulation_steps=4 but the config's accumulative_counts gives 3; using 3.",
        "my.json sets fp16.enabled=True but the config's dtype (bf16) gives False; using False.",
        "my.json sets bf16.enabled=False but the config's dtype (bf16) gives True; using True.",
    ]
    # agreeing values and "auto" are not reported
    assert resolve_deepspeed_config({"gradient_accumulation_steps": 3, "gradient_clipping": "auto"}, cfg)[1] == []


def test_the_train_command_switches_to_the_flexible_runner(tiny_llama, alpaca_file, tmp_path, monkeypatch, capsys):
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(key, value)  # as under torchrun; restored after the test
    path = tmp_path / "user.json"
    path.write_text(json.dumps({"train_micro_batch_size_per_gpu": 8, "zero_optimization": {"stage": 3}}))
    cfg = _cfg(tiny_llama, alpaca_file, "--deepspeed", str(path), "--launcher", "pytorch", batch_size=2)
    assert cfg.runner_type == "XtuneRunner"  # the one runner; the DeepSpeed strategy makes it a DeepSpeed run
    assert cfg.optim_wrapper["type"] == "DeepSpeedOptimWrapper"
    assert cfg.optim_wrapper["optimizer"]["type"] == "AdamW"  # the config's torch optimizer, not DeepSpeed's
    assert cfg.optim_wrapper["constructor"] == "FusedAdamConstructor"  # the shipped schedule's
    config = cfg.strategy["config"]
    assert config["train_micro_batch_size_per_gpu"] == 2 and config["train_batch_size"] == 2 * 3 * 2
    assert "train_micro_batch_size_per_gpu=8" in capsys.readouterr().err


def test_a_config_without_an_optimizer_constructor_gets_the_fused_one_under_deepspeed(tiny_llama, alpaca_file):
    cfg = _cfg(tiny_llama, alpaca_file, "--deepspeed", "zero2_offload", batch_size=1,
               **{"optim_wrapper.constructor": None})  # fmt: skip
    assert cfg.optim_wrapper["constructor"] == "FusedAdamConstructor"
    assert "fused" not in cfg.optim_wrapper["optimizer"]  # the constructor adds it when it builds


def test_qlora_under_zero3_stores_its_4bit_weights_in_the_training_dtype(tiny_llama, alpaca_file, capsys):
    from xtune.cli.train import prepare_config

    def qlora_cfg(deepspeed: str, **options):
        argv = ["train", "tiny_llama_qlora_identity_e3", "--work-dir", "unused", "--deepspeed", deepspeed]
        options = _options(tiny_llama, alpaca_file, batch_size=1, dtype="bf16", **options)
        return prepare_config(build_parser().parse_args(argv + ["--cfg-options", *cfg_options(options)]))

    cfg = qlora_cfg("zero3")
    assert cfg.model["quantization"]["bnb_4bit_quant_storage"] == "bfloat16"
    assert "bnb_4bit_quant_storage" in capsys.readouterr().err
    assert "bnb_4bit_quant_storage" not in qlora_cfg("zero2").model.get("quantization", {})  # ZeRO-2: uint8
    with pytest.raises(ConfigError, match="bnb_4bit_quant_storage='bfloat16'.*got 'uint8'"):
        qlora_cfg("zero3", **{"model.quantization.bnb_4bit_quant_storage": "uint8"})


def test_an_unknown_deepspeed_name_lists_the_presets(capsys):
    assert main(["train", FULL, "--deepspeed", "zero9"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("xtune: error: --deepspeed zero9: not a preset and no such file.")
    assert all(name in err for name in PRESETS)


def test_a_broken_json_names_the_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{\n  "zero_optimization": {"stage": 2},\n}\n')
    with pytest.raises(ConfigError, match=r"bad.json is not valid JSON: .* at line 3"):
        read_deepspeed_config(path)


def test_multi_node_launch_needs_the_address_of_node_zero():
    from xtune.cli.train import launch_settings

    with pytest.raises(ConfigError, match="NNODES=2: every node must meet at node 0"):
        launch_settings({"NNODES": "2", "NPROC_PER_NODE": "8"})
    settings = launch_settings({"NNODES": "2", "ADDR": "10.0.0.1", "PORT": "29512", "SLURM_NODEID": "1"})
    assert settings == {
        "nproc_per_node": "1",
        "nnodes": "2",
        "node_rank": "1",
        "master_addr": "10.0.0.1",
        "master_port": "29512",
    }
    assert int(launch_settings({})["master_port"]) > 0  # a free port when none is set


# ----------------------------------------------------------------------------------------- safe loading
class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_checkpoint_files_that_pickle_code_are_refused(tmp_path):
    from xtune.engine.flexible_runner import SafeTorchCheckpointEngine

    folder = tmp_path / "iter_1.pth"
    folder.mkdir()
    bad = folder / "mp_rank_00_model_states.pt"
    torch.save({"module": {}, "param_shapes": [], "hook": _Exploit()}, bad)
    (folder / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(bad.read_bytes())
    with pytest.raises(CheckpointError, match="pickled posix.system"):
        load_zero_checkpoint(folder)
    with pytest.raises(CheckpointError, match="pickled posix.system"):
        SafeTorchCheckpointEngine(None).load(str(bad), map_location="cpu")  # what --resume loads with
    with pytest.raises(pickle.UnpicklingError):
        torch.load(bad, weights_only=True)  # and plain torch agrees that it is unsafe


def test_an_incomplete_zero_folder_is_refused(runs):
    work, _ = runs.ranks(FULL, "zero3", save_steps=1, save_total_limit=-1)
    broken = runs.root / "broken.pth"
    shutil.copytree(work / "iter_3.pth", broken)
    (broken / "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()
    with pytest.raises(CheckpointError, match="saved by 2 ranks but holds 1 optimizer state files"):
        load_zero_checkpoint(broken)
    # what a 2-rank DeepSpeed checkpoint holds loads with weights_only and the allow-list alone
    state = load_deepspeed_file(work / "iter_3.pth" / "zero_pp_rank_1_mp_rank_00_model_states.pt")
    assert state["meta"]["iter"] == 3 and isinstance(state["message_hub"]["log_scalars"], dict)


def test_zero3_evaluate_chat_and_save_hf_at_end(tiny_llama, alpaca_file, tmp_path):
    # Under ZeRO-3 a generate on one rank alone would wait forever for the others' weight shards.
    options = _options(
        tiny_llama, alpaca_file, 2, max_epochs=1, evaluation_inputs=["Who are you?"], save_hf_at_end=True
    )
    _run_ranks(LORA, tmp_path, "zero3", options)
    records = [json.loads(line) for line in (tmp_path / "eval_chat.jsonl").read_text().splitlines()]
    assert len(records) == 1 and records[0]["prompt"] == "Who are you?" and records[0]["answer"]
    # save_hf_at_end: the adapter is gathered from both ranks' ZeRO-3 shards
    assert (tmp_path / "hf" / "adapter_model.safetensors").exists()


# ----------------------------------------------------------------------------------------- stop signals
def test_sigterm_to_xtune_train_stops_every_rank_at_one_step_and_resume_is_exact(runs, tmp_path):
    """SIGTERM to the launcher reaches the workers (not only torchrun), both ranks save the same
    iteration, the exit status says "interrupted", and resuming ends where an uninterrupted run ends."""
    options = _options(runs.model, runs.data, batch_size=2, accumulative_counts=1, max_epochs=8, save_steps=10**6)
    work = tmp_path / "stopped"
    command = rank_command(LORA, work, options, ["--deepspeed", "zero2"])
    env = rank_env(RANKS)
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not list(work.glob("*/vis_data/scalars.json")) and time.time() < deadline and process.poll() is None:
        time.sleep(0.1)  # training steps are running
    tree = process_tree(process.pid)
    process.send_signal(signal.SIGTERM)  # to `xtune train` alone, as `kill PID` or a scheduler would
    _, err = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert len(tree) >= 4 and not [pid for pid in tree if Path(f"/proc/{pid}").exists()]  # no orphans
    saved = Path((work / "last_checkpoint").read_text().strip())
    step = int(saved.name.split("_")[1].split(".")[0])
    assert is_zero_checkpoint(saved) and 0 < step < 32
    assert load_deepspeed_file(saved / "mp_rank_00_model_states.pt")["meta"]["iter"] == step  # not step + 1
    assert len(list(saved.glob("*optim_states.pt"))) == RANKS  # every rank saved its part of the same step
    assert f"interrupted by SIGTERM at iteration {step}" in err
    assert f"Resume with: NPROC_PER_NODE=2 xtune train {LORA} --work-dir {work} --deepspeed zero2" in err

    resumed = _run_ranks(LORA, work, "zero2", options, "--resume", "auto")
    assert f"resumed epoch: 0, iter: {step}" in resumed.stdout + resumed.stderr
    reference = tmp_path / "single"
    assert train(LORA, reference, {**options, "batch_size": 2 * RANKS}) == 0
    assert max_difference(final_weights(reference), _converted_weights(work, LORA)) < 1e-4
