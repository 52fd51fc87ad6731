"""Model and tokenizer loading: the two model kinds, the pad-token rule, clear errors."""

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM, LlamaForSequenceClassification

from xtune.errors import ConfigError, XtuneError
from xtune.hf.load import load_model, load_tokenizer, recorded_dtype


def _edit_json(path, **changes) -> None:
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data))


@pytest.fixture
def no_pad_model(tiny_llama, tmp_path):
    """tiny_llama with no pad token anywhere: neither its config nor its tokenizer names one."""
    folder = tmp_path / "no_pad"
    shutil.copytree(tiny_llama, folder)
    _edit_json(folder / "config.json", pad_token_id=None)
    _edit_json(folder / "tokenizer_config.json", pad_token=None)
    return folder


def test_tokenizer_without_pad_pads_with_eos(no_pad_model, tiny_llama):
    assert AutoTokenizer.from_pretrained(no_pad_model).pad_token_id is None
    tokenizer = load_tokenizer(no_pad_model)
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token_id == tokenizer.eos_token_id is not None
    assert load_tokenizer(no_pad_model, pad=False).pad_token_id is None  # kept as saved
    own = load_tokenizer(tiny_llama)  # a tokenizer with a pad token keeps it
    assert own.pad_token == "<|endoftext|>" and own.pad_token_id == 0 != own.eos_token_id


def test_tokenizer_errors_name_the_path_and_the_fix(tmp_path):
    with pytest.raises(ConfigError, match=r"^cannot load a tokenizer from model name \(no such local directory\) "):
        load_tokenizer("/no/such/tokenizer")
    with pytest.raises(XtuneError, match=r"cannot load a tokenizer from directory '.*empty'.*Pass a folder\.$"):
        (tmp_path / "empty").mkdir()
        load_tokenizer(tmp_path / "empty", fix="Pass a folder.", error=XtuneError)


def test_causal_lm_is_the_plain_transformers_model(tiny_llama):
    model = load_model(tiny_llama, dtype="fp32")
    plain = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    assert type(model) is LlamaForCausalLM
    ids = torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, plain(input_ids=ids).logits, rtol=0, atol=0)
    assert {p.dtype for p in load_model(tiny_llama, dtype="bf16").parameters()} == {torch.bfloat16}


def test_sequence_classification_has_one_label_and_the_data_pad_id(tiny_llama, no_pad_model):
    model = load_model(tiny_llama, kind="sequence_classification", dtype="fp32")
    assert type(model) is LlamaForSequenceClassification
    assert model.config.num_labels == 1 and model.score.weight.shape == (1, model.config.hidden_size)
    assert model.config.pad_token_id == 0  # the config's own
    # decoder weights are the checkpoint's; only the score head is new
    causal = load_model(tiny_llama, dtype="fp32")
    torch.testing.assert_close(model.model.embed_tokens.weight, causal.model.embed_tokens.weight)
    # No pad id in the config: the one batches are padded with (the tokenizer's after the pad rule)
    unpadded = load_model(no_pad_model, kind="sequence_classification", dtype="fp32")
    assert unpadded.config.pad_token_id == load_tokenizer(no_pad_model).pad_token_id
    assert unpadded.config.pad_token_id == AutoTokenizer.from_pretrained(no_pad_model).eos_token_id


def test_a_config_without_pad_id_takes_the_tokenizer_pad_even_when_it_is_zero(tiny_llama, tmp_path):
    folder = tmp_path / "config_no_pad"
    shutil.copytree(tiny_llama, folder)
    _edit_json(folder / "config.json", pad_token_id=None)
    model = load_model(folder, kind="sequence_classification", dtype="fp32")
    assert model.config.pad_token_id == 0  # id 0 is a pad id like any other, not "missing"


def test_model_errors_name_the_path_and_the_callers_fix(tiny_llama):
    with pytest.raises(ConfigError) as caught:
        load_model("/no/such/model")
    assert str(caught.value) == (
        "cannot load the model '/no/such/model': no such directory. Check the path, or give a hub name like "
        "org/model. Set pretrained_model_name_or_path to a Hugging Face model directory or hub name."
    )
    with pytest.raises(XtuneError, match=r"^cannot load '/no/such/model': no such directory.* Pass it\.$") as caught:
        load_model("/no/such/model", what="", fix="Pass it.", error=XtuneError)
    assert not isinstance(caught.value, ConfigError)
    with pytest.raises(ValueError, match="model kind must be one of causal_lm, sequence_classification"):
        load_model(tiny_llama, kind="seq2seq")


def test_loading_options_reach_transformers(tiny_llama, monkeypatch):
    """device, quantization, attention and remote code are passed on as transformers names them."""
    from xtune.hf import load

    seen = []

    def capture(path, **kwargs):
        seen.append(kwargs)
        raise OSError("captured")

    monkeypatch.setattr(load.AutoModelForCausalLM, "from_pretrained", capture)
    quantization = object()
    for device in (None, "cpu", "cuda:1", 0):
        with pytest.raises(ConfigError, match="captured"):
            load_model(tiny_llama, device=device, quantization=quantization, attn_implementation="eager")
    assert [kwargs.get("device_map") for kwargs in seen] == [None, None, {"": "cuda:1"}, {"": 0}]
    assert all(kwargs["quantization_config"] is quantization for kwargs in seen)
    assert all(kwargs["attn_implementation"] == "eager" and kwargs["trust_remote_code"] is False for kwargs in seen)
    with pytest.raises(ConfigError):
        load_model(tiny_llama, dtype="fp16", trust_remote_code=True)
    assert seen[-1] == {"dtype": torch.float16, "trust_remote_code": True}  # auto attention: transformers picks


def test_recorded_dtype(tiny_llama, tmp_path):
    assert recorded_dtype(tiny_llama) == "fp32"
    folder = tmp_path / "bf16"
    shutil.copytree(tiny_llama, folder)
    _edit_json(folder / "config.json", dtype="bfloat16", torch_dtype=None)
    assert recorded_dtype(folder) == "bf16"
    with pytest.raises(XtuneError, match="cannot read the base model config in"):
        recorded_dtype(tmp_path / "missing")
