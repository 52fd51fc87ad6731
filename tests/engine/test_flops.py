"""Training FLOPs: active experts only for mixtures of experts, the vision side per image patch, and
agreement with torch's FlopCounterMode on the matmuls of a real forward + backward.

The tiny models' shapes (xtune.testing): text hidden 64, 2 layers, 4 query heads of 16 over 2 KV heads, MLP
128; the vocabulary V is the tiny tokenizer's, rounded up to 64. Vision towers: hidden 32, MLP 64, 2 layers.
"""

import json
import logging
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText

from xtune.engine import flops as flops_module
from xtune.engine.flops import (
    MOE_FAMILIES,
    VISION_TOWERS,
    expert_count,
    model_flops,
    training_flops,
    window_lengths,
)
from xtune.engine.hooks import throughput
from xtune.engine.hooks.throughput import ThroughputHook
from xtune.hf.vision import VISION_FAMILIES, load_processor
from xtune.model import SupervisedFinetune
from xtune.testing import tiny_config
from xtune.testing.tiny_vision import make_tiny_vlm

# per decoder layer of the tiny text models
ATTENTION = 64 * 64 + 64 * 32 + 64 * 32 + 64 * 64  # q, k (2 KV heads of 16), v, o
QWEN_ATTENTION = ATTENTION + 64 + 32 + 32  # Qwen 2 adds q, k, v biases
NORMS = 2 * 64  # input and post-attention RMSNorm weights


def _vocab(arch: str) -> int:
    return tiny_config(arch).vocab_size


def _model(arch: str, **kwargs):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_config(tiny_config(arch), attn_implementation="sdpa", **kwargs)


def test_a_dense_model_counts_every_parameter_but_the_input_embedding():
    flops = model_flops(_model("llama"))
    per_layer = ATTENTION + 3 * 64 * 128 + NORMS  # gate, up, down projections
    expected = 2 * per_layer + 64 + _vocab("llama") * 64  # final norm, untied output layer
    assert (flops.text_parameters, flops.layers, flops.width, flops.vision, flops.notes) == (expected, 2, 64, None, ())
    assert flops.batch_flops([3, 5]) == 6 * expected * 8 + 6 * 2 * 64 * (9 + 25)


def test_mixtral_counts_only_the_two_experts_a_token_is_routed_to():
    flops = model_flops(_model("mixtral"))
    expert = 2 * 128 * 64 + 64 * 128  # fused gate+up, down
    per_layer = ATTENTION + 4 * 64 + 2 * expert + NORMS  # the router sees every token; 2 of the 4 experts
    expected = 2 * per_layer + 64 + _vocab("mixtral") * 64
    assert flops.text_parameters == expected
    assert flops.notes == ()
    assert flops.batch_flops([10]) == 6 * expected * 10 + 6 * 2 * 64 * 100


def test_qwen2_moe_counts_its_dense_first_layer_and_shared_expert_in_full():
    flops = model_flops(_model("qwen2_moe"))
    dense = QWEN_ATTENTION + 3 * 64 * 128 + NORMS  # mlp_only_layers=[0]
    shared = 3 * 64 * 64 + 64  # the shared expert (MLP 64) and its gate run for every token
    sparse = QWEN_ATTENTION + 4 * 64 + 2 * (3 * 64 * 32) + shared + NORMS  # 2 of 4 experts of MLP 32
    assert flops.text_parameters == dense + sparse + 64 + _vocab("qwen2_moe") * 64


def test_an_moe_family_it_does_not_know_counts_every_expert_and_says_so(monkeypatch, tmp_path):
    monkeypatch.delitem(MOE_FAMILIES, "mixtral")
    model = _model("mixtral")
    flops = model_flops(model)
    expected = 2 * (ATTENTION + 4 * 64 + 4 * (2 * 128 * 64 + 64 * 128) + NORMS) + 64 + _vocab("mixtral") * 64
    assert flops.text_parameters == expected  # every expert: an upper bound
    assert len(flops.notes) == 1 and "'mixtral' looks like a mixture-of-experts" in flops.notes[0]

    # the hook logs it once and keeps it beside the numbers
    logged = []
    monkeypatch.setattr(throughput, "print_log", lambda message, **kwargs: logged.append((message, kwargs)))
    hook = ThroughputHook(warmup_iters=0)
    hook.before_train(SimpleNamespace(model=SimpleNamespace(causal_lm=lambda: model)))
    assert logged == [(f"throughput: {flops.notes[0]}", {"logger": "current", "level": logging.WARNING})]
    hook.after_train(SimpleNamespace(work_dir=str(tmp_path)))
    summary = json.loads((tmp_path / "throughput.json").read_text())
    assert summary["flops_notes"] == list(flops.notes) and summary["matmul_parameters"] == expected


def test_every_listed_moe_family_keeps_its_experts_where_the_table_says():
    for model_type, family in MOE_FAMILIES.items():
        config = AutoConfig.for_model(model_type)
        with torch.device("meta"):
            model = AutoModel.from_config(config)
        found = [m for name, m in model.named_modules() if name.rsplit(".", 1)[-1] == family.experts]
        assert found, model_type
        experts = next(getattr(config, key) for key in flops_module._EXPERT_COUNT_KEYS if hasattr(config, key))
        assert {expert_count(m) for m in found} == {experts}, model_type
        assert family.top_k in config.to_dict() or hasattr(config, family.top_k), model_type


def _matmul_flops(counter: FlopCounterMode) -> int:
    """The counter's matmuls (linear layers, convolutions); its attention kernels are left out."""
    ops = ("aten.mm", "aten.addmm", "aten.bmm", "aten.convolution", "aten.convolution_backward")
    return sum(v for k, v in counter.get_flop_counts()["Global"].items() if str(k) in ops)


def _vectors(module: torch.nn.Module) -> int:
    """Norm weights and biases: parameters 6N counts that multiply no matrix."""
    return sum(p.numel() for p in module.parameters() if p.ndim == 1)


@pytest.mark.parametrize("arch", ["llama", "mixtral", "qwen2_moe"])
def test_flop_counter_sees_the_same_matmuls_in_a_forward_and_backward(arch):
    # eager experts: each expert's tokens through plain matmuls, which the counter counts (grouped_mm it does not)
    model = _model(arch, **({} if arch == "llama" else {"experts_implementation": "eager"}))
    ids = torch.randint(0, 200, (1, 24))
    counter = FlopCounterMode(display=False)
    with counter:
        model(input_ids=ids, labels=ids).loss.backward()
    flops = model_flops(model)
    # the same count, but for the norm weights and biases 6N includes (sdpa's attention is not counted here)
    assert _matmul_flops(counter) == 6 * (flops.text_parameters - _vectors(model)) * 24


@pytest.fixture(scope="module")
def qwen_vl(tmp_path_factory):
    path = make_tiny_vlm("qwen2_5_vl", tmp_path_factory.mktemp("qwen") / "model")
    return path, load_processor(path)


# the tiny Qwen2.5-VL tower: 14-pixel patches over 2 frames, 2 x 2 merged; windows of 56 pixels = 2 x 2 merged
QWEN_LAYERS = 2 * (32 + 32 + (32 * 96 + 96) + (32 * 32 + 32) + 2 * (32 * 64 + 64) + (64 * 32 + 32))
QWEN_PATCH = 3 * 2 * 14 * 14 * 32  # Conv3d without bias
QWEN_MERGER = 32 + (128 * 128 + 128) + (128 * 64 + 64)  # norm, then 4 patches' features -> MLP -> LM width
QWEN_TEXT = 2 * (QWEN_ATTENTION + 3 * 64 * 128 + NORMS) + 64 + 192512  # the LM and its untied output layer


def _qwen_vision(grids: list[tuple[int, int, int]], windows: list[int]) -> float:
    patches = sum(t * h * w for t, h, w in grids)
    full = sum((h * w) ** 2 * t for t, h, w in grids)  # layer 1 (fullatt_block_indexes=[1]): whole frames
    attention = 12 * 32 * (sum(s * s for s in windows) + full)  # layer 0: within windows
    return 6 * (QWEN_LAYERS * patches + QWEN_PATCH * patches + QWEN_MERGER * patches // 4) + attention


def test_qwen2_5_vl_counts_its_tower_per_patch_and_attention_per_window(qwen_vl):
    vlm = AutoModelForImageTextToText.from_pretrained(qwen_vl[0])
    flops = model_flops(vlm)
    assert flops.text_parameters == QWEN_TEXT
    assert flops.vision.layer_parameters == QWEN_LAYERS and flops.vision.patch_parameters == QWEN_PATCH
    # 8 x 12 patches: 4 x 6 merged, windows of 2 x 2 merged (16 patches); 6 x 10: 3 x 5 merged, edges smaller
    grids = torch.tensor([[1, 8, 12], [1, 6, 10]])
    windows = [16] * 6 + [16, 16, 8, 8, 8, 4]
    assert flops.vision.flops({"pixel_values": None, "image_grid_thw": grids}) == _qwen_vision(
        [(1, 8, 12), (1, 6, 10)], windows
    )
    assert flops.batch_flops([50], {"image_grid_thw": grids}) == training_flops(QWEN_TEXT, 2, 64, [50]) + (
        _qwen_vision([(1, 8, 12), (1, 6, 10)], windows)
    )


@pytest.mark.parametrize("grid", [(1, 8, 12), (1, 6, 10), (2, 4, 4), (1, 2, 14), (1, 16, 16)])
def test_window_lengths_are_the_windows_transformers_partitions(grid):
    from transformers.vision_utils import get_vision_window_index

    _, cumulative = get_vision_window_index(torch.tensor([grid]), spatial_merge_size=2, window_size=112, patch_size=14)
    assert window_lengths(*grid, merge=2, window=4) == torch.diff(cumulative).tolist()


def test_llava_counts_the_tower_per_token_and_the_projector_per_image_feature(tmp_path):
    vlm = AutoModelForImageTextToText.from_pretrained(make_tiny_vlm("llava", tmp_path / "llava"))
    flops = model_flops(vlm)
    clip_layers = 2 * (4 * (32 * 32 + 32) + (32 * 64 + 64) + (64 * 32 + 32) + 2 * 64)  # q k v out, fc1 fc2, norms
    layers = 64 + clip_layers + 64  # pre- and post-layernorm; class and position embeddings are lookups
    projector = (32 * 64 + 64) + (64 * 64 + 64)
    assert flops.text_parameters == 2 * (ATTENTION + 3 * 64 * 128 + NORMS) + 64 + 192512
    # two 32 x 32 images: 16 patches of 8 pixels and the class token; LLaVA-1.5 maps the 16 patches' features
    pixels = torch.zeros(2, 3, 32, 32)
    expected = 6 * (layers * 17 + 3 * 8 * 8 * 32 * 16 + projector * 16) * 2 + 12 * 32 * 2 * (17 * 17) * 2
    assert flops.vision.flops({"pixel_values": pixels}) == expected


@pytest.mark.parametrize("frozen_tower", [False, True])
def test_flop_counter_sees_the_vision_side_as_counted(qwen_vl, frozen_tower):
    vlm = AutoModelForImageTextToText.from_pretrained(qwen_vl[0], attn_implementation="sdpa")
    tower = vlm.model.visual
    tower.requires_grad_(not frozen_tower)
    config = vlm.config
    grid = torch.tensor([[1, 8, 12]])  # 96 patches, 24 features
    ids = [5, 6, config.vision_start_token_id] + [config.image_token_id] * 24 + [config.vision_end_token_id, 7, 8]
    ids = torch.tensor([ids])
    inputs = {"pixel_values": torch.randn(96, 3 * 2 * 14 * 14), "image_grid_thw": grid}
    counter = FlopCounterMode(display=False)
    with counter:
        vlm(input_ids=ids, mm_token_type_ids=(ids == config.image_token_id).int(), labels=ids, **inputs).loss.backward()
    flops = model_flops(vlm)
    # what the counter leaves out: norm weights and biases, attention (sdpa), and the patch embedding's
    # gradient for its input (the pixels need none): 2 of its 6 FLOPs per parameter and patch
    left_out = 6 * (_vectors(vlm) - _vectors(tower)) * ids.shape[1]
    left_out += 6 * (_vectors(tower.blocks) * 96 + _vectors(tower.merger) * 24) + 2 * QWEN_PATCH * 96
    left_out += 6 * 2 * 64 * ids.shape[1] ** 2 + 12 * 32 * (6 * 16 * 16 + 96 * 96)  # 6 windows; 1 frame
    if frozen_tower:  # no backward through the tower at all: 2N of the 6N the MFU convention counts
        matrices = QWEN_LAYERS - _vectors(tower.blocks), QWEN_MERGER - _vectors(tower.merger)
        left_out += 4 * (matrices[0] * 96 + matrices[1] * 24) + 2 * QWEN_PATCH * 96
    assert _matmul_flops(counter) == flops.batch_flops([ids.shape[1]], inputs) - left_out


def test_the_hook_counts_a_vlm_batch_per_text_token_and_image_patch(qwen_vl):
    path, processor = qwen_vl
    model = SupervisedFinetune(str(path), finetune_type="full", dtype="fp32")
    vision = processor.pixels([Image.new("RGB", (84, 56))])  # width 84, height 56: 4 x 6 patches of 14
    assert vision["image_grid_thw"].tolist() == [[1, 4, 6]]
    batch = {
        "input_ids": torch.full((2, 30), 5),
        "num_tokens": torch.tensor([30, 12]),  # the second row padded
        "vision": vision,
    }
    hook = ThroughputHook(warmup_iters=0)
    runner = SimpleNamespace(model=model, message_hub=SimpleNamespace(update_scalar=lambda *args: None))
    hook.before_train(runner)
    hook.before_train_iter(runner, 0, batch)
    hook.after_train_iter(runner, 0, batch)
    # 2 x 3 merged patches: one window of 2 x 2 and one of 2 x 1 (16 and 8 patches)
    expected = training_flops(QWEN_TEXT, 2, 64, [30, 12]) + _qwen_vision([(1, 4, 6)], [16, 8])
    assert hook._totals["flops"] == expected
    assert hook._totals["tokens"] == 42


def test_every_vision_family_has_a_tower_rule():
    assert set(VISION_TOWERS) == set(VISION_FAMILIES)


def test_a_siglip_tower_has_no_class_token_and_runs_its_pooling_head_once_per_image():
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    siglip = {"model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64}
    siglip |= {"num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 32, "patch_size": 8}
    config = LlavaConfig(vision_config=siglip, text_config=tiny_config("llama").to_dict())
    config.vision_feature_select_strategy = "full"  # every token's feature (SigLIP has no class token)
    with torch.device("meta"):
        vlm = LlavaForConditionalGeneration(config)
    head = sum(p.numel() for p in vlm.model.vision_tower.head.parameters())
    assert head == 4 * 32 * 32 + 4 * 32 + 32 + 2 * 32 + (32 * 64 + 64) + (64 * 32 + 32)  # probe, attention, norm, MLP
    vision = model_flops(vlm).vision
    assert (vision.class_tokens, vision.image_parameters) == (0, head)
    layers = 2 * (4 * (32 * 32 + 32) + (32 * 64 + 64) + (64 * 32 + 32) + 2 * 64) + 64  # post_layernorm
    projector = (32 * 64 + 64) + (64 * 64 + 64)
    patch = 3 * 8 * 8 * 32 + 32  # SigLIP's patch embedding has a bias
    # one 32 x 32 image: 16 patches, 16 tower tokens, 16 features; the head once
    expected = 6 * (layers * 16 + patch * 16 + projector * 16 + head) + 12 * 32 * 2 * 16 * 16
    assert vision.flops({"pixel_values": torch.zeros(1, 3, 32, 32)}) == expected


@pytest.mark.parametrize("model_type", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_full_size_qwen_towers_are_read_from_their_own_config_keys(model_type):
    with torch.device("meta"):
        vlm = AutoModelForImageTextToText.from_config(AutoConfig.for_model(model_type))
    vision = model_flops(vlm).vision
    tower = vlm.config.vision_config
    heads = tower.num_heads
    head_dim = vlm.model.visual.blocks[0].attn.head_dim
    assert (vision.layers, vision.width) == (tower.depth, heads * head_dim)  # Qwen2-VL: embed_dim, not hidden_size
    assert vision.patch_parameters == sum(p.numel() for p in vlm.model.visual.patch_embed.parameters())
    projector = vlm.model.visual.merger
    assert vision.projector_parameters >= sum(p.numel() for p in projector.parameters())


def test_an_moe_config_without_its_experts_per_token_key_counts_every_expert_and_says_so(monkeypatch):
    from xtune.engine.flops import MoeFamily

    monkeypatch.setitem(MOE_FAMILIES, "mixtral", MoeFamily(top_k="moe_topk"))  # a key this config lacks
    flops = model_flops(_model("mixtral"))
    assert flops.text_parameters == 2 * (ATTENTION + 4 * 64 + 4 * (2 * 128 * 64 + 64 * 128) + NORMS) + 64 + (
        _vocab("mixtral") * 64
    )
    assert len(flops.notes) == 1 and "has no moe_topk" in flops.notes[0]
