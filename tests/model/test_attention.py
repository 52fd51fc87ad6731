"""The packing contract: packed samples never see each other, on every attention path and family, and
attention per sample (``xtune_varlen``) trains exactly as transformers' dense masks do."""

import json

import pytest
import torch

from xtune.config import load_config
from xtune.dataset.collate import sft_collate_fn
from xtune.errors import ConfigError
from xtune.model import SupervisedFinetune
from xtune.model.attention import VARLEN, segments_from_positions, segments_from_right_padding
from xtune.paths import CONFIG_DIR
from xtune.registry import MODELS
from xtune.testing import TINY_ARCHS, make_tiny_model
from xtune.testing.remote_code import make_remote_code_model

# transformers' own choice for each tiny model (Gemma 2 has no sdpa: soft-capping)
DENSE = {arch: "eager" if arch == "gemma2" else "sdpa" for arch in TINY_ARCHS}


def _packed_items(seed: int = 0, first: list[int] | None = None) -> list[dict]:
    """Two packed rows: samples of 9 and 13 tokens, then one of 20 (padded by the collator)."""
    generator = torch.Generator().manual_seed(seed)
    items = []
    for lengths in ([9, 13], [20]):
        ids = torch.randint(3, 900, (sum(lengths),), generator=generator).tolist()
        positions = [p for n in lengths for p in range(n)]
        items.append({"input_ids": ids, "labels": ids, "position_ids": positions})
    if first is not None:
        items[0]["input_ids"] = first + items[0]["input_ids"][9:]
    return items


def _logits(model: SupervisedFinetune, items: list[dict]) -> torch.Tensor:
    batch = sft_collate_fn(items)
    del batch["labels"], batch["num_tokens"]
    with torch.no_grad():
        return model(**batch, mode="tensor")


def _assert_samples_apart(model: SupervisedFinetune) -> None:
    """Change the first sample: its logits move, the other two samples' do not."""
    before = _logits(model, _packed_items())
    after = _logits(model, _packed_items(first=list(range(100, 109))))
    assert (before[0, :9] - after[0, :9]).abs().max() > 1e-3
    torch.testing.assert_close(after[0, 9:], before[0, 9:], rtol=0, atol=1e-6)
    torch.testing.assert_close(after[1], before[1], rtol=0, atol=1e-6)


def test_the_collator_states_every_segment():
    batch = sft_collate_fn(_packed_items())
    # row 0: 9 + 13 = 22 tokens = the width; row 1: 20 tokens, then 2 of padding
    assert batch["cu_seq_lens"].tolist() == [0, 9, 22, 42, 44]
    assert batch["cu_seq_lens"].dtype == torch.int32
    torch.testing.assert_close(segments_from_positions(batch["position_ids"]), batch["cu_seq_lens"])
    padded = sft_collate_fn([{"input_ids": [5] * 6, "labels": [5] * 6}, {"input_ids": [5] * 2, "labels": [5] * 2}])
    assert padded["cu_seq_lens"].tolist() == [0, 6, 8, 12]  # row 1: 2 real tokens, then a padding segment
    torch.testing.assert_close(segments_from_right_padding(padded["attention_mask"]), padded["cu_seq_lens"])
    assert segments_from_right_padding(torch.tensor([[0, 1, 1]])) is None  # left padding is not a segment list


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_packed_samples_never_attend_to_each_other(arch, tmp_path):
    path = make_tiny_model(arch, tmp_path / arch)
    for attention in ("auto", DENSE[arch]):
        model = SupervisedFinetune(
            str(path), finetune_type="full", dtype="fp32", attn_implementation=attention, pack_to_max_length=True
        )
        assert model.attn_implementation == (VARLEN if attention == "auto" else attention)
        _assert_samples_apart(model)


def _remote_family_model(family: str, model_path, **options):
    """The family's shipped LoRA config, built on a stand-in model."""
    config = CONFIG_DIR / family / {"internlm2_5": "internlm2_5_7b_chat_lora_alpaca_e3.py",
                                    "glm4": "glm4_9b_chat_lora_alpaca_e3.py"}[family]  # fmt: skip
    settings = {"pretrained_model_name_or_path": str(model_path), "dtype": "fp32", "max_length": 256,
                "model.lora.target_modules": "all-linear", **options}  # fmt: skip
    cfg = load_config(config, settings)
    assert cfg.model.trust_remote_code is True
    return cfg, MODELS.build(cfg.model)


@pytest.mark.parametrize("family", ["internlm2_5", "glm4"])
def test_remote_code_families_pack_only_when_their_code_keeps_samples_apart(family, tmp_path):
    leaky = make_remote_code_model(tmp_path / "leaky", leaky=True)
    # As shipped, these families do not pack: their Hub code ignores the restarting positions.
    cfg, model = _remote_family_model(family, leaky)
    assert cfg.pack_to_max_length is False and type(model.causal_lm()).__name__ == "StandInForCausalLM"
    with pytest.raises(ConfigError, match="packed samples attend to each other"):
        _logits(model, _packed_items())  # a packed batch anyway: checked before it runs
    with pytest.raises(ConfigError, match="pack_to_max_length=False"):
        _remote_family_model(family, leaky, pack_to_max_length=True)  # refused when the model is built
    # Remote code that does keep packed samples apart passes the probe and packs.
    honest = make_remote_code_model(tmp_path / "honest", leaky=False)
    _, model = _remote_family_model(family, honest, pack_to_max_length=True)
    _assert_samples_apart(model)


def _loss_and_grads(model: SupervisedFinetune, batch: dict) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad()
    loss = model(**batch)["loss"]
    loss.backward()
    return float(loss), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def _with_window(path, window: int) -> None:
    config = json.loads((path / "config.json").read_text())
    config["sliding_window"] = window
    (path / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("arch", [*TINY_ARCHS, "mistral-window", "gemma2-window"])
def test_attention_per_sample_trains_exactly_as_the_dense_mask(arch, tmp_path):
    name = arch.split("-")[0]
    path = make_tiny_model(name, tmp_path / name)
    if arch.endswith("-window"):
        _with_window(path, 6)  # shorter than the samples: windowed segments take the masked path
    varlen = SupervisedFinetune(str(path), finetune_type="full", dtype="fp32", attn_implementation=VARLEN)
    dense = SupervisedFinetune(str(path), finetune_type="full", dtype="fp32", attn_implementation=DENSE[name])
    padded = [{"input_ids": list(range(5, 5 + n)), "labels": list(range(5, 5 + n))} for n in (17, 11)]
    for batch in (sft_collate_fn(_packed_items()), sft_collate_fn(padded)):
        loss, grads = _loss_and_grads(varlen, batch)
        expected_loss, expected_grads = _loss_and_grads(dense, batch)
        assert loss == pytest.approx(expected_loss, rel=1e-6)
        for key, grad in expected_grads.items():
            torch.testing.assert_close(grads[key], grad, rtol=1e-4, atol=1e-6, msg=key)


def test_generation_with_left_padding_is_unchanged(tiny_llama):
    """Without segments (generation, a KV cache, a left-padded batch) ``xtune_varlen`` is sdpa."""
    from transformers import AutoModelForCausalLM

    ids = torch.randint(3, 900, (2, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    outputs = []
    for attention in ("sdpa", VARLEN):
        model = AutoModelForCausalLM.from_pretrained(tiny_llama, attn_implementation=attention)
        outputs.append(model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False))
    assert torch.equal(outputs[0], outputs[1])
