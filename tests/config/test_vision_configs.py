"""Every shipped image-text config resolves, agrees with its name, and trains one step on tiny stand-ins.

LLaVA-style configs (``llava_<llm>_<vision>_<algo>_<data>_eN``) compose a causal LM with a ViT: here a tiny LM
of the same architecture and the tiny CLIP. VLM-folder configs (``<vlm>_<algo>_<data>_eN``) get a tiny model of
their family. Datasets on the user's disk (LLaVA-Pretrain, the 665k mix) are swapped for the shipped demos of the
same layout.
"""

import math
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

import xtune.engine  # noqa: F401  (registers the runner, loop, hooks, model and dataset)
import xtune.model  # noqa: F401
from tests.config.test_config_zoo import ONE_STEP, _runner, is_vision_config
from xtune.config import list_configs, load_config
from xtune.errors import XtuneError
from xtune.registry import MODELS
from xtune.testing import make_tiny_model, tiny_tokenizer_dir
from xtune.testing.tiny_vision import make_tiny_clip, make_tiny_vlm

VISION_CONFIGS = [path for path in list_configs() if is_vision_config(path)]
LLAVA = re.compile(
    r"^llava_(?P<llm>\w+?)_(?P<vision>clip_vit_\w+?_p\d+_\d+|tiny_clip)_(?P<algo>pretrain|full|lora|qlora|dora)"
    r"_(?P<data>\w+)_e(?P<epochs>\d+)$"
)
VLM = re.compile(r"^(?P<model>\w+?)_(?P<algo>full|lora|qlora|dora)_(?P<data>\w+)_e(?P<epochs>\d+)$")
# the language model part of a LLaVA name -> (tiny arch, template, hub id start)
LLMS = {
    "qwen2_5_7b_instruct": ("qwen2", "qwen2_5", "Qwen/Qwen2.5-"),
    "llama3_1_8b_instruct": ("llama", "llama3", "meta-llama/Llama-3."),
    "tiny_llama": (None, "auto", ""),
}
VISION = {"clip_vit_large_p14_336": "openai/clip-vit-large-patch14-336", "tiny_clip": "tiny_clip"}
# VLM folders: family -> (tiny family, template, hub id start)
VLMS = {"qwen2_5_vl": ("qwen2_5_vl", "auto", "Qwen/Qwen2.5-VL-"), "llava_1_5": ("llava", "llava", "llava-hf/")}
DATA = {
    "llava_558k": "blip_laion_cc_sbu_558k.json",
    "llava_665k": "llava_v1_5_mix665k.json",
    "mllm_demo": "mllm_demo",
    "llava_pretrain_demo": "llava_pretrain_demo",
}
STAND_INS = {"llava_558k": "llava_pretrain_demo", "llava_665k": "mllm_demo"}


def test_both_routes_and_both_stages_are_shipped():
    stems = [p.stem for p in VISION_CONFIGS]
    for algo in ("pretrain", "lora", "qlora", "full"):
        assert any(s.startswith("llava_qwen2_5") and f"_{algo}_" in s for s in stems), algo
    for family in VLMS:
        assert any(p.parent.name == family and "_lora_" in p.stem for p in VISION_CONFIGS), family
    assert any(s.startswith("qwen2_5_vl_7b_instruct_") for s in stems)
    assert any(s.startswith("llava_1_5_7b_hf_") for s in stems)


@pytest.mark.parametrize("path", VISION_CONFIGS, ids=lambda p: p.stem)
def test_vision_config_agrees_with_its_name(path):
    cfg = load_config(path)
    match = LLAVA.match(path.stem) or VLM.match(path.stem)
    assert match, f"{path.stem} is neither llava_<llm>_<vision>_<algo>_<data>_eN nor <vlm>_<algo>_<data>_eN"
    assert cfg.max_epochs == int(match["epochs"]) == cfg.train_cfg.max_epochs
    assert cfg.train_dataset.type == "VisionSFTDataset"
    assert cfg.train_dataloader.collate_fn.type == "xtune.vision_collate_fn"
    assert cfg.data_path.endswith(DATA[match["data"]])
    if "llm" in match.groupdict():
        _, template, hub = LLMS[match["llm"]]
        assert cfg.vision_tower.endswith(VISION[match["vision"]]) and cfg.model.vision_tower == cfg.vision_tower
        assert cfg.train_dataset.vision_tower == cfg.vision_tower
        pretrain = match["algo"] == "pretrain"
        assert cfg.model.finetune_type == ("full" if pretrain else match["algo"])
        assert cfg.model.freeze_llm is pretrain
        # the finetune stage starts from the pretrain stage's projector, by name
        if not pretrain and path.parent.name != "tiny":
            assert cfg.projector.endswith(path.stem.replace(f"_{match['algo']}_llava_665k_", "_pretrain_llava_558k_"))
    else:
        _, template, hub = VLMS[path.parent.name]
        assert cfg.model.finetune_type == match["algo"] and cfg.vision_tower is None
    assert cfg.prompt_template == template == cfg.train_dataset.prompt_template
    assert cfg.pretrained_model_name_or_path.startswith(hub) or path.parent.name == "tiny"


@pytest.fixture(scope="module")
def tiny_parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("vision_zoo")
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir())
    tokenizer.bos_token = "<|endoftext|>"  # the llama3 template writes one (as in test_config_zoo)
    tokenizer.save_pretrained(root / "tokenizer")
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            if name == "clip":
                made[name] = make_tiny_clip(root / name)
            elif name in ("llava", "qwen2_5_vl"):
                made[name] = make_tiny_vlm(name, root / name)
            else:
                made[name] = make_tiny_model(name, root / name, tokenizer_dir=root / "tokenizer")
        return made[name]

    return get


@pytest.mark.parametrize("path", VISION_CONFIGS, ids=lambda p: p.stem)
def test_vision_config_trains_one_step_on_tiny_models(path, tiny_parts, tmp_path):
    shipped = load_config(path)
    options = dict(ONE_STEP, evaluation_inputs=[])
    match = LLAVA.match(path.stem)
    if match and match["llm"] != "tiny_llama":
        options["pretrained_model_name_or_path"] = str(tiny_parts(LLMS[match["llm"]][0]))
        options["vision_tower"] = str(tiny_parts("clip"))
    elif not match:
        options["pretrained_model_name_or_path"] = str(tiny_parts(VLMS[path.parent.name][0]))
    name = next(key for key, value in DATA.items() if shipped.data_path.endswith(value))
    if name in STAND_INS:
        options.update(data_path=STAND_INS[name], image_folder=None, data_format=None)
    if shipped.projector:
        options["projector"] = None  # the pretrain stage's run is not there: a fresh projector
    if shipped.model.finetune_type == "qlora" and not torch.cuda.is_available():
        with pytest.raises(XtuneError, match="qlora needs a CUDA GPU"):
            MODELS.build(load_config(path, options).model)
        options["model.finetune_type"] = "lora"

    runner = _runner(path, options, tmp_path)
    runner.train()

    assert math.isfinite(runner.message_hub.get_scalar("train/loss").current())
    trainable = {name for name, p in runner.model.named_parameters() if p.requires_grad}
    assert trainable
    if shipped.freeze_llm:  # the pretrain stage: the projector alone
        assert all("multi_modal_projector" in name for name in trainable)
    if shipped.freeze_vision_tower:
        assert not any("vision_tower" in name or ".visual.blocks" in name for name in trainable)
