"""Every shipped config resolves, names its family's model and template, and trains one step.

For each leaf config under ``configs/``: the config resolves as shipped; its name, model, template,
dataset and epochs agree; and, with the model swapped for a tiny random-init model of the same
architecture, Hub datasets swapped for shipped demo data of the same format and sizes shrunk, the
runner builds the model, dataset, optimizer and hooks and trains one step that saves a checkpoint.
A qlora config must stop with a clear error on a CPU, and then trains as lora.
"""

import math
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

import xtune.engine  # noqa: F401  (registers the runner, loop, hooks, model and dataset)
import xtune.model  # noqa: F401
from xtune.cli import build_parser
from xtune.cli.train import prepare_config
from xtune.config import list_configs, load_config
from xtune.errors import XtuneError
from xtune.registry import MODELS, RUNNERS
from xtune.testing import make_tiny_model, tiny_tokenizer_dir
from xtune.testing.training import cfg_options

# family (the folder under configs/): (tiny arch of the same transformers config class, built-in template,
# start of the Hub id). internlm2_5 and glm4 run their repositories' own code; no tiny model of those
# classes can be built offline, so the nearest native architecture stands in.
FAMILIES = {
    "qwen2_5": ("qwen2", "qwen2_5", "Qwen/Qwen2.5-"),
    "qwen3": ("qwen3", "qwen3", "Qwen/Qwen3-"),
    "llama3": ("llama", "llama3", "meta-llama/Llama-3."),
    "internlm2_5": ("llama", "internlm2", "internlm/internlm2_5-"),
    "mistral": ("mistral", "mistral", "mistralai/Mistral-"),
    "gemma2": ("gemma2", "gemma", "google/gemma-2-"),
    "phi3": ("phi3", "phi3", "microsoft/Phi-3"),
    "glm4": ("glm4", "glm4", "THUDM/glm-4-"),
    "deepseek_r1_distill": ("qwen2", "deepseek", "deepseek-ai/DeepSeek-R1-Distill-Qwen-"),
    "yi": ("llama", "yi", "01-ai/Yi-1.5-"),
    "tiny": (None, "auto", ""),  # the CPU demo: its shipped model is already tiny
}
REMOTE_CODE = {"internlm2_5", "glm4"}
# The dataset part of a config name -> the data_path the config must use.
DATASETS = {
    "alpaca": "alpaca",
    "alpaca_zh": "alpaca_zh",
    "identity": "identity",
    "sharegpt": "sharegpt_demo",
    "openai": "openai_demo",
    "pretrain": "pretrain_demo",
    "preference": "preference_demo",
    "orca_pairs": "orca_dpo_pairs",
    "kto_demo": "kto_demo",
    "longalpaca": "longalpaca",
}
# shipped data of the same format
HUB_STAND_INS = {
    "alpaca": "alpaca_demo",
    "alpaca_zh": "alpaca_demo",
    "orca_dpo_pairs": "preference_demo",
    "longalpaca": "alpaca_demo",
}
# The algorithm part is the finetune type, then the stage unless it is SFT/PT: lora_dpo, full_rm, ...
NAME = re.compile(
    r"^(?P<model>\w+?)_(?P<algo>full|freeze|lora|qlora|dora)(?:_(?P<stage>dpo|orpo|simpo|kto|rm))?"
    r"_(?P<data>\w+)_e(?P<epochs>\d+)$"
)

# One optimizer step of one short row in fp32, with no answers generated at the end.
ONE_STEP = {
    "dtype": "fp32",
    "max_length": 512,  # room for the longest template header (llama3's) plus an answer
    "batch_size": 1,
    "accumulative_counts": 1,
    "train_cfg.max_epochs": None,
    "train_cfg.max_iters": 1,
    "evaluation_inputs": [],
}

# Image-text configs have their own naming and tiny stand-ins: tests/config/test_vision_configs.py
VISION_FAMILIES = {"llava", "llava_1_5", "qwen2_5_vl"}


def is_vision_config(path: Path) -> bool:
    return path.parent.name in VISION_FAMILIES or path.stem.startswith("llava_")


CONFIGS = [path for path in list_configs() if not is_vision_config(path)]
ZOO = [path for path in CONFIGS if path.parent.name != "tiny"]


def _family(path: Path) -> str:
    return path.parent.name


@pytest.fixture(scope="module")
def tiny_model_for(tmp_path_factory):
    """arch -> a tiny model folder, made once per module. Its tokenizer is the shipped tiny one with a BOS
    token, which the llama3, llama2, mistral, gemma, internlm2 and deepseek templates write."""
    root = tmp_path_factory.mktemp("zoo_models")
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir())
    tokenizer.bos_token = "<|endoftext|>"
    tokenizer.save_pretrained(root / "tokenizer")
    made: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in made:
            made[arch] = make_tiny_model(arch, root / arch, tokenizer_dir=root / "tokenizer")
        return made[arch]

    return get


def _runner(path: Path, options: dict, work_dir: Path):
    args = build_parser().parse_args(
        ["train", str(path), "--work-dir", str(work_dir), "--cfg-options", *cfg_options(options)]
    )
    return RUNNERS.build(prepare_config(args))


def test_the_zoo_covers_every_family_with_alpaca_and_identity():
    assert len(ZOO) >= 60
    for family in FAMILIES.keys() - {"tiny"}:
        names = [p.stem for p in ZOO if _family(p) == family]
        for algo in ("full", "lora", "qlora"):
            assert any(f"_{algo}_alpaca_" in n for n in names), f"{family} has no {algo} alpaca config"
        assert any("_identity_" in n for n in names), f"{family} has no identity config"
    stems = [p.stem for p in ZOO]
    for part in ("_freeze_", "_dora_", "_alpaca_zh_", "_sharegpt_", "_openai_", "_full_pretrain_"):
        assert any(part in s for s in stems), f"no config with {part}"
    assert len(set(stems)) == len(stems)  # names are unique, so every config can be given by name


def test_leaf_configs_stay_short():
    lengths = sorted(len(p.read_text().splitlines()) for p in CONFIGS)
    assert lengths[len(lengths) // 2] <= 40
    assert max(lengths) <= 60


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_agrees_with_its_name_family_and_template(path):
    family = _family(path)
    assert family in FAMILIES, f"configs/{family}/ is not a known family: add it to FAMILIES"
    _, template, hub_prefix = FAMILIES[family]
    match = NAME.match(path.stem)
    assert match, f"{path.stem} is not <model>_<algo>_<dataset>_e<N>"
    assert path.stem.startswith(f"{family}_")
    cfg = load_config(path)
    assert cfg.model.finetune_type == match["algo"]
    assert cfg.model.objective.type == (match["stage"] or ("pt" if match["data"] == "pretrain" else "sft"))
    assert cfg.max_epochs == int(match["epochs"])
    assert cfg.train_cfg.max_epochs == cfg.max_epochs  # the knob reached the loop
    assert cfg.train_dataset.data_path == DATASETS[match["data"]] == cfg.data_path
    assert cfg.prompt_template == template == cfg.train_dataset.prompt_template
    if family != "tiny":
        assert cfg.pretrained_model_name_or_path.startswith(hub_prefix)
    # Remote code runs only where a model needs it, and then the config says so itself.
    assert cfg.trust_remote_code is (family in REMOTE_CODE)
    assert cfg.model.trust_remote_code is cfg.trust_remote_code is cfg.train_dataset.trust_remote_code
    if family in REMOTE_CODE:
        assert "trust_remote_code = True" in path.read_text()
        if cfg.model.finetune_type in ("lora", "qlora", "dora"):
            # 'all-linear' would also wrap these models' output heads; they name their layers instead.
            assert isinstance(cfg.model.lora.target_modules, list)
    assert cfg.optim_wrapper.optimizer.lr == cfg.lr
    assert cfg.train_dataloader.batch_size == cfg.batch_size
    # the knob reaches the model (attention, head checks) and the loop (sampler, sharding)
    assert cfg.model.sequence_parallel_size == cfg.train_cfg.sequence_parallel_size == cfg.sequence_parallel_size
    if match["data"] == "longalpaca":
        assert cfg.max_length == 32768 and cfg.pack_to_max_length and cfg.gradient_checkpointing is True


# Families whose models read 32k tokens natively and run transformers' own attention (so sequence parallelism
# applies). Left out: gemma2 (8k context), yi (4k; 16k variants), and glm4 / internlm2_5, whose configs load
# the model's own code, which sequence parallelism cannot wrap; deepseek_r1_distill trains reasoning data.
LONG_CONTEXT_FAMILIES = {"qwen2_5", "qwen3", "llama3", "mistral", "phi3"}


def test_every_family_with_long_context_has_a_longalpaca_config():
    long = {_family(p) for p in ZOO if "_longalpaca_" in p.stem}
    assert long == LONG_CONTEXT_FAMILIES


def test_sequence_parallel_size_given_as_an_option_reaches_model_and_loop():
    cfg = load_config("qwen2_5_7b_instruct_qlora_longalpaca_e1", {"sequence_parallel_size": 4})
    assert cfg.model.sequence_parallel_size == cfg.train_cfg.sequence_parallel_size == 4
    with pytest.raises(XtuneError, match=r"sequence_parallel_size=0: expected a whole number >= 1"):
        load_config("qwen2_5_7b_instruct_qlora_longalpaca_e1", {"sequence_parallel_size": 0})


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_trains_one_step_on_a_tiny_model(path, tiny_model_for, tmp_path):
    family = _family(path)
    arch = FAMILIES[family][0]
    shipped = load_config(path)
    options = dict(ONE_STEP)
    if arch is not None:
        options["pretrained_model_name_or_path"] = str(tiny_model_for(arch))
    if shipped.data_path in HUB_STAND_INS:
        options["data_path"] = HUB_STAND_INS[shipped.data_path]
    if family in REMOTE_CODE and "lora" in shipped.model:
        options["model.lora.target_modules"] = "all-linear"  # the stand-in has native layer names
    if shipped.model.finetune_type == "qlora" and not torch.cuda.is_available():
        # The model is what needs the GPU: building it alone shows the error the runner would stop with.
        with pytest.raises(XtuneError, match="qlora needs a CUDA GPU"):
            MODELS.build(load_config(path, options).model)
        options["model.finetune_type"] = "lora"

    runner = _runner(path, options, tmp_path)
    runner.train()

    assert math.isfinite(runner.message_hub.get_scalar("train/loss").current())
    checkpoint = Path((tmp_path / "last_checkpoint").read_text().strip())
    assert checkpoint.is_file() and checkpoint.parent == tmp_path
    trainable = sum(p.numel() for p in runner.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in runner.model.parameters())
    assert 0 < trainable <= total
    assert (trainable == total) is (shipped.model.finetune_type == "full")
