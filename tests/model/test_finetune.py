"""The finetuning wrapper: what each type trains, what checkpoints hold, clear errors."""

import pytest
import torch

from xtune.errors import ConfigError, XtuneError
from xtune.model import SupervisedFinetune


def _trainable(model) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def test_full_trains_and_saves_everything(tiny_llama):
    model = SupervisedFinetune(str(tiny_llama), finetune_type="full", dtype="fp32")
    assert _trainable(model) == {name for name, _ in model.named_parameters()}
    assert set(model.state_dict()) == set(model.llm.state_dict(prefix="llm."))


def test_freeze_trains_the_last_layers_and_named_modules(tiny_llama):
    model = SupervisedFinetune(
        str(tiny_llama),
        finetune_type="freeze",
        dtype="fp32",
        freeze={"trainable_layers": 1, "trainable_modules": ["model.norm"]},
    )
    trainable = _trainable(model)
    assert trainable and all(".layers.1." in n or "model.norm" in n for n in trainable)
    assert not any(".layers.0." in n for n in trainable)
    assert set(model.state_dict()) == trainable
    with pytest.raises(ConfigError, match="has 2 layers"):
        SupervisedFinetune(str(tiny_llama), finetune_type="freeze", freeze={"trainable_layers": 5})


@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_adapters_train_alone_and_start_as_the_base_model(tiny_llama, kind):
    model = SupervisedFinetune(
        str(tiny_llama), finetune_type=kind, dtype="fp32", lora={"r": 4, "lora_alpha": 8, "lora_dropout": 0.0}
    )
    trainable = _trainable(model)
    assert trainable and all("lora_" in n for n in trainable)
    assert set(model.state_dict()) == trainable
    if kind == "dora":
        assert any("lora_magnitude_vector" in n for n in trainable)
    base = SupervisedFinetune(str(tiny_llama), finetune_type="full", dtype="fp32")
    ids = torch.randint(0, 100, (1, 12))
    torch.testing.assert_close(model(ids, mode="tensor"), base(ids, mode="tensor"), atol=1e-5, rtol=0)


def test_qlora_on_cpu_says_it_needs_a_gpu(tiny_llama):
    with pytest.raises(XtuneError, match="qlora needs a CUDA GPU"):
        SupervisedFinetune(str(tiny_llama), finetune_type="qlora")


def test_unknown_type_and_dtype_are_config_errors(tiny_llama):
    with pytest.raises(ConfigError, match="finetune_type"):
        SupervisedFinetune(str(tiny_llama), finetune_type="prefix")
    with pytest.raises(ConfigError, match="dtype"):
        SupervisedFinetune(str(tiny_llama), finetune_type="full", dtype="float8")
    with pytest.raises(ConfigError, match="cannot load the model"):
        SupervisedFinetune("/no/such/model", finetune_type="full")


def test_gradient_checkpointing_knob(tiny_llama):
    on = SupervisedFinetune(str(tiny_llama), finetune_type="full", gradient_checkpointing=True)
    off = SupervisedFinetune(str(tiny_llama), finetune_type="full", gradient_checkpointing="auto")  # 1M params
    assert on.llm.is_gradient_checkpointing and not off.llm.is_gradient_checkpointing


def test_loss_is_the_token_mean_unless_scaled(tiny_llama):
    model = SupervisedFinetune(str(tiny_llama), finetune_type="full", dtype="fp32")
    ids = torch.randint(0, 100, (2, 10))
    labels = ids.clone()
    labels[:, :4] = -100
    mean = model(ids, labels=labels)["loss"]
    reference = model.llm(input_ids=ids, labels=labels).loss
    torch.testing.assert_close(mean, reference)
    trained = int((labels[:, 1:] != -100).sum())
    torch.testing.assert_close(model(ids, labels=labels, loss_scale=1.0)["loss"], mean * trained)


def test_compiled_layers_train_exactly_like_eager_ones(tiny_llama):
    """Packed rows of two lengths (a recompile for the second) under gradient checkpointing."""
    eager = SupervisedFinetune(str(tiny_llama), finetune_type="full", dtype="fp32", gradient_checkpointing=True)
    compiled = SupervisedFinetune(
        str(tiny_llama), finetune_type="full", dtype="fp32", gradient_checkpointing=True, compile_layers=True
    )
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 3000, (2, 48), generator=generator)
    labels = ids.clone()
    labels[:, :5] = -100
    positions = torch.cat([torch.arange(20), torch.arange(28)]).expand(2, -1)
    for length in (48, 40):
        batch = {"input_ids": ids[:, :length], "labels": labels[:, :length], "position_ids": positions[:, :length]}
        results = []
        for model in (eager, compiled):
            model.zero_grad()
            loss = model(**batch)["loss"]
            loss.backward()
            results.append((float(loss), {n: p.grad.clone() for n, p in model.named_parameters()}))
        assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
        for name, grad in results[0][1].items():
            torch.testing.assert_close(results[1][1][name], grad, rtol=1e-5, atol=1e-7, msg=name)
    assert all(hasattr(layer, "_compiled_call_impl") for layer in compiled.causal_lm().get_decoder().layers)
