"""Config lookup, inheritance, overrides and knob propagation."""

import pytest

from xtune.config import find_config, list_configs, load_config, parse_cfg_options
from xtune.config.interpolate import resolve
from xtune.errors import ConfigError

TINY = "tiny_llama_full_identity_e3"


def test_name_and_path_find_the_same_file():
    by_name = find_config(TINY)
    assert by_name.name == f"{TINY}.py"
    assert find_config(str(by_name)) == by_name


def test_unknown_name_lists_closest_names():
    with pytest.raises(ConfigError) as info:
        find_config("tiny_llama_ful_identity_e3")
    assert TINY in str(info.value)


def test_missing_path_names_it():
    with pytest.raises(ConfigError, match="/no/such.py"):
        find_config("/no/such.py")


def test_inheritance_merges_bases_into_the_leaf():
    cfg = load_config(TINY)
    assert cfg.model["type"] == "SupervisedFinetune"  # from _base_/models/base.py
    assert cfg.model["finetune_type"] == "full"  # from _base_/models/full.py
    assert cfg.data_path == "identity"  # from _base_/datasets/identity.py
    assert cfg.lr == 1e-3  # the leaf's own value
    assert cfg.optim_wrapper["optimizer"]["lr"] == 1e-3  # the leaf's knob reaches the optimizer


def test_knobs_propagate_to_every_derived_field():
    cfg = load_config(TINY, parse_cfg_options(["lr=0.123", "max_length=77", "batch_size=1", "save_steps=3"]))
    assert cfg.optim_wrapper["optimizer"]["lr"] == 0.123
    assert cfg.train_dataloader["dataset"]["max_length"] == 77
    assert cfg.train_dataset["max_length"] == 77
    assert cfg.train_dataloader["batch_size"] == 1
    assert cfg.default_hooks["checkpoint"]["interval"] == 3 * cfg.accumulative_counts


def test_nested_override_wins_over_the_knob():
    cfg = load_config(TINY, parse_cfg_options(["lr=0.5", "optim_wrapper.optimizer.lr=0.25"]))
    assert cfg.lr == 0.5
    assert cfg.optim_wrapper["optimizer"]["lr"] == 0.25


def test_unknown_top_level_key_errors_with_closest():
    with pytest.raises(ConfigError, match="did you mean lr"):
        load_config(TINY, {"lrr": 1})


def test_values_parse_as_python_literals():
    options = parse_cfg_options(["a=None", "b=[]", "c=(0.9,0.95)", "d=1e-5", "e=hello", "f=True"])
    assert options == {"a": None, "b": [], "c": (0.9, 0.95), "d": 1e-5, "e": "hello", "f": True}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_cfg_options(["novalue"])


def test_empty_scheduler_list_means_constant_lr():
    cfg = load_config(TINY, parse_cfg_options(["param_scheduler=[]"]))
    assert cfg.param_scheduler == []


def test_references_resolve_expressions_and_detect_cycles():
    knobs = {"a": 2, "b": 3, "c": "${a * b}", "s": "x-${a}", "loop": "${loop2}", "loop2": "${loop}"}
    assert resolve({"v": "${c + 1}", "t": "${s}"}, knobs) == {"v": 7, "t": "x-2"}
    with pytest.raises(ConfigError, match="cycle"):
        resolve("${loop}", knobs)
    with pytest.raises(ConfigError, match="not a top-level key"):
        resolve("${nope}", knobs)


def test_arithmetic_on_a_knob_that_is_not_a_number_names_the_field_and_the_values():
    with pytest.raises(ConfigError) as caught:
        load_config(TINY, parse_cfg_options(["max_epochs=None", "warmup_ratio=0.1"]))
    message = str(caught.value)
    assert "param_scheduler[0].end" in message and "max_epochs=None" in message and "warmup_ratio=0.1" in message
    # the fix the message names works: the fields computed from max_epochs set directly
    options = ["max_epochs=None", "param_scheduler=[]", "train_cfg.max_epochs=None", "train_cfg.max_iters=4"]
    assert load_config(TINY, parse_cfg_options(options)).train_cfg["max_iters"] == 4


def test_shipped_model_name_becomes_a_path():
    cfg = load_config(TINY)
    assert cfg.model["pretrained_model_name_or_path"].endswith("data/models/tiny_llama")


def test_every_shipped_config_resolves():
    assert list_configs()
    for path in list_configs():
        cfg = load_config(path)
        assert "${" not in cfg.pretty_text, path


def test_a_qlora_leaf_is_its_lora_sibling_in_4_bits():
    """Each qlora config with a lora sibling differs from it only in the finetune type and 4-bit settings,
    so the two cannot drift apart (the qlora leaves inherit their sibling)."""
    names = {path.stem for path in list_configs()}
    pairs = [(name, name.replace("_qlora_", "_lora_")) for name in sorted(names) if "_qlora_" in name]
    pairs = [(q, lo) for q, lo in pairs if lo in names]
    assert len(pairs) >= 20  # the preference leaves and the alpaca ones
    for qlora_name, lora_name in pairs:
        qlora, lora = load_config(qlora_name).to_dict(), load_config(lora_name).to_dict()
        assert qlora["model"].pop("finetune_type") == "qlora", qlora_name
        assert lora["model"].pop("finetune_type") == "lora", lora_name
        quantization = qlora["model"].pop("quantization", None)
        assert quantization in (None, {"bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True}), qlora_name
        assert qlora == lora, f"{qlora_name} differs from {lora_name} beyond finetune_type/quantization"
