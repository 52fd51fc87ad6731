"""``gradient_checkpointing='auto'``: decided by the step's estimated memory against the device's."""

import pytest
from transformers import AutoModelForCausalLM, LlamaConfig

from xtune.errors import ConfigError
from xtune.model import SupervisedFinetune, checkpointing
from xtune.model.checkpointing import MEMORY_MARGIN, activation_bytes, training_bytes, want_checkpointing

GIB = 2**30


def _llama_8b_config() -> LlamaConfig:
    return LlamaConfig(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                       intermediate_size=14336, vocab_size=128256)  # fmt: skip


def test_activations_grow_with_tokens_layers_and_adapters():
    config = _llama_8b_config()
    one = activation_bytes(config, 1, 2, adapters=False)
    assert activation_bytes(config, 4096, 2, adapters=False) == 4096 * one
    assert activation_bytes(config, 1, 4, adapters=False) == 2 * one
    assert activation_bytes(config, 1, 2, adapters=True) > one
    # Llama-3-8B, bf16, 8192 tokens without checkpointing: tens of GiB (measured ~60 GiB on GPUs)
    assert 30 * GIB < activation_bytes(config, 8192, 2, adapters=True) < 120 * GIB


def test_full_finetuning_counts_gradients_and_adam_states(tiny_llama):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    weights = sum(p.numel() * 4 for p in model.parameters())
    lora = training_bytes(model, "lora", 0)
    assert lora == weights
    assert training_bytes(model, "full", 0) == weights + weights // 4 * (4 + 8)


def test_auto_is_off_when_the_step_fits_and_on_when_it_does_not(tiny_llama, monkeypatch):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    need = training_bytes(model, "lora", 1024)
    monkeypatch.setattr(checkpointing, "device_memory_bytes", lambda: int(need / MEMORY_MARGIN) + 1024)
    assert want_checkpointing("auto", model, "lora", 1024) is False
    monkeypatch.setattr(checkpointing, "device_memory_bytes", lambda: int(need / MEMORY_MARGIN) - 1024)
    assert want_checkpointing("auto", model, "lora", 1024) is True
    # more tokens per micro-batch need more memory: the same device now calls for checkpointing
    monkeypatch.setattr(checkpointing, "device_memory_bytes", lambda: int(need / MEMORY_MARGIN) + 1024)
    assert want_checkpointing("auto", model, "lora", 4096) is True
    assert want_checkpointing(True, model, "lora", 1) is True
    assert want_checkpointing(False, model, "lora", 10**9) is False
    with pytest.raises(ConfigError, match="gradient_checkpointing must be"):
        want_checkpointing("yes", model, "lora", 1)


def test_the_model_follows_the_decision(tiny_llama, monkeypatch):
    monkeypatch.setattr(checkpointing, "device_memory_bytes", lambda: 1024)  # nothing fits
    small = SupervisedFinetune(str(tiny_llama), finetune_type="lora", dtype="fp32", tokens_per_batch=512)
    assert small.llm.is_gradient_checkpointing
    monkeypatch.setattr(checkpointing, "device_memory_bytes", lambda: 64 * GIB)
    roomy = SupervisedFinetune(str(tiny_llama), finetune_type="lora", dtype="fp32", tokens_per_batch=512)
    assert not roomy.llm.is_gradient_checkpointing


def _packed_batch() -> dict:
    from xtune.dataset.collate import sft_collate_fn

    items = [
        {"input_ids": list(range(5, 45)), "labels": [-100] * 10 + list(range(15, 45)), "position_ids": list(range(40))},
        {"input_ids": list(range(50, 80)), "labels": [-100] * 5 + list(range(55, 80)),
         "position_ids": list(range(12)) + list(range(18))},
    ]  # fmt: skip
    return sft_collate_fn(items)


def _loss_and_grads(model) -> tuple[float, dict]:
    import torch

    torch.manual_seed(0)
    model.train()
    loss = model(**_packed_batch(), mode="loss")["loss"]
    loss.backward()
    return float(loss), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("finetune_type", ["full", "lora"])
def test_activation_offload_keeps_loss_and_gradients(tiny_llama, monkeypatch, finetune_type):
    import torch

    options = {"finetune_type": finetune_type, "dtype": "fp32", "lora": {"lora_dropout": 0.0}}
    plain = _loss_and_grads(SupervisedFinetune(str(tiny_llama), gradient_checkpointing=False, **options))
    packed_shapes = []
    original = torch.autograd.graph.save_on_cpu

    class Counting(original):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            pack = self.pack_hook
            self.pack_hook = lambda tensor: (packed_shapes.append(tuple(tensor.shape)), pack(tensor))[1]

    monkeypatch.setattr(torch.autograd.graph, "save_on_cpu", Counting)
    model = SupervisedFinetune(str(tiny_llama), activation_offload=True, **options)
    assert model.causal_lm().is_gradient_checkpointing  # turned on by activation_offload
    offloaded = _loss_and_grads(model)
    # each of the 2 decoder layers' input (batch x width x hidden) went to CPU memory
    assert packed_shapes.count((2, 40, 64)) == 2
    assert abs(offloaded[0] - plain[0]) <= 1e-6 * abs(plain[0])
    assert plain[1].keys() == offloaded[1].keys()
    for name, grad in plain[1].items():
        assert torch.allclose(offloaded[1][name], grad, rtol=1e-5, atol=1e-7), name


def test_activation_offload_needs_checkpointing(tiny_llama):
    with pytest.raises(ConfigError, match="activation_offload=True .* gradient_checkpointing=False"):
        SupervisedFinetune(str(tiny_llama), gradient_checkpointing=False, activation_offload=True)


@pytest.mark.parametrize("finetune_type", ["full", "lora"])
def test_tiled_mlp_keeps_loss_gradients_and_checkpoint_keys(tiny_llama, finetune_type):
    import torch

    from xtune.model.tiling import TiledMLP

    options = {"finetune_type": finetune_type, "dtype": "fp32", "lora": {"lora_dropout": 0.0}}
    plain_model = SupervisedFinetune(str(tiny_llama), gradient_checkpointing=False, **options)
    plain = _loss_and_grads(plain_model)
    # 40-token rows in tiles of 16: 3 tiles, the last one short; with and without checkpointing
    for recompute in (False, True):
        model = SupervisedFinetune(str(tiny_llama), gradient_checkpointing=recompute, tiled_mlp=16, **options)
        assert all(isinstance(layer.mlp, TiledMLP) for layer in model.causal_lm().get_decoder().layers)
        assert model.state_dict().keys() == plain_model.state_dict().keys()
        tiled = _loss_and_grads(model)
        assert abs(tiled[0] - plain[0]) <= 1e-6 * abs(plain[0])
        for name, grad in plain[1].items():
            assert torch.allclose(tiled[1][name], grad, rtol=1e-5, atol=1e-7), (recompute, name)


def test_tiled_mlp_refuses_bad_values(tiny_llama):
    with pytest.raises(ConfigError, match="tiled_mlp must be a whole number of tokens per tile"):
        SupervisedFinetune(str(tiny_llama), tiled_mlp=-1)


def test_tiled_mlp_is_refused_under_data_parallelism(tiny_llama, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM

    from xtune.model.tiling import tile_mlps

    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: 2)
    with pytest.raises(ConfigError, match=r"tiled_mlp=512 is for training on one device.*Set tiled_mlp=0"):
        tile_mlps(AutoModelForCausalLM.from_pretrained(tiny_llama), 512)
