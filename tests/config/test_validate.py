"""Config checks: the knob table, nested option keys, literals read without running anything, max_iters."""

import inspect
import re
from pathlib import Path

import pytest

from xtune.config import load_config, parse_cfg_options
from xtune.config.literal import NotALiteral, parse_literal, read_assignments
from xtune.config.validate import DATA_FORMATS, FINETUNE_TYPES, KNOBS, KNOWN_ARGUMENTS
from xtune.errors import ConfigError

TINY = "tiny_llama_lora_identity_e3"
README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_knob_of_the_readme_table_is_checked():
    text = README.read_text()
    paragraph = text[text.index("The top-level knobs are") : text.index("The structured mmengine fields")]
    config = load_config(TINY)
    knobs = [name for name in re.findall(r"`([a-z_]+)`", paragraph) if name in config]
    assert len(knobs) >= 17
    assert [name for name in knobs if name not in KNOBS] == []


def test_local_copies_of_the_accepted_values_are_the_packages_own():
    import xtune.engine  # noqa: F401
    from xtune.dataset.dataset_info import FORMATS
    from xtune.model.finetune import FINETUNE_TYPES as MODEL_TYPES
    from xtune.registry import LOOPS

    assert FINETUNE_TYPES == MODEL_TYPES
    assert DATA_FORMATS == FORMATS
    for path, names in KNOWN_ARGUMENTS.items():
        loop = LOOPS.get(load_config(TINY)[path]["type"])
        assert names <= set(inspect.signature(loop).parameters), path


def test_literals_are_data_and_calls_are_refused():
    assert parse_literal("[dict(type='LinearLR', end=2), (1, -2.5), None]") == [
        {"type": "LinearLR", "end": 2},
        (1, -2.5),
        None,
    ]
    for text in ("__import__('os').system('true')", "open('x')", "dict(**x)", "a.b", "[1, 2"):
        with pytest.raises(NotALiteral):
            parse_literal(text)


def test_checkpoint_config_text_is_read_without_running_it(tmp_path):
    marker = tmp_path / "RAN"
    text = (
        "import os\n"
        f"_ = __import__('os').system('touch {marker}')\n"
        f"open('{marker}', 'w')\n"
        "lr = 0.5\n"
        "model = dict(type='SupervisedFinetune', finetune_type='lora', lora=dict(r=8))\n"
        f"bad = os.system('touch {marker}')\n"
    )
    values = read_assignments(text)
    assert values == {"lr": 0.5, "model": {"type": "SupervisedFinetune", "finetune_type": "lora", "lora": {"r": 8}}}
    assert not marker.exists()


def test_a_nested_option_names_its_closest_keys():
    with pytest.raises(ConfigError, match=r"model.lora has no key 'rr' \(did you mean r\?\)"):
        load_config(TINY, parse_cfg_options(["model.lora.rr=8"]))


def test_values_that_do_not_parse_are_text_only_where_text_belongs():
    assert load_config(TINY, parse_cfg_options(["data_path=my_data.json"])).data_path == "my_data.json"
    with pytest.raises(ConfigError, match="lr=1e-5e"):
        load_config(TINY, parse_cfg_options(["lr=1e-5e"]))


def test_max_iters_alone_trains_by_iterations_and_the_schedule_follows():
    cfg = load_config(TINY, parse_cfg_options(["train_cfg.max_iters=20", "warmup_ratio=0.1"]))
    assert cfg.train_cfg["max_epochs"] is None and cfg.train_cfg["max_iters"] == 20
    warmup, decay = cfg.param_scheduler
    assert (warmup["begin"], warmup["end"], warmup["by_epoch"]) == (0, 2, False)
    assert (decay["begin"], decay["end"], decay["by_epoch"]) == (2, 20, False)
    # asking for both is refused, not silently resolved
    with pytest.raises(ConfigError, match="sets both"):
        load_config(TINY, parse_cfg_options(["train_cfg.max_iters=20", "train_cfg.max_epochs=2"]))


def test_max_iters_alone_runs_that_many_iterations(tmp_path):
    from xtune.testing.training import train

    options = {"train_cfg.max_iters": 3, "save_steps": 1, "save_total_limit": -1, "evaluation_inputs": []}
    assert train(TINY, tmp_path, options) == 0
    assert sorted(p.name for p in tmp_path.glob("iter_*.pth")) == ["iter_1.pth", "iter_2.pth", "iter_3.pth"]


def test_dtype_is_checked_against_the_machine():
    from xtune.config.preflight import training_problems

    def problems(dtype: str, cuda: bool, bf16: bool) -> list[str]:
        return training_problems({"model": {"dtype": dtype}}, None, cuda_available=cuda, bf16_supported=bf16)

    assert "CPU" in problems("fp16", cuda=False, bf16=False)[0]
    assert problems("fp16", cuda=True, bf16=False) == []
    assert "does not support bf16" in problems("bf16", cuda=True, bf16=False)[0]
    assert problems("bf16", cuda=True, bf16=True) == [] and problems("fp32", cuda=False, bf16=False) == []


def test_readme_states_the_trust_model():
    text = README.read_text()
    section = text[text.index("### Trust") :][:1500]
    assert "runs it with your permissions" in section and "Only use configs you trust" in section
    for data in ("checkpoints", "load_from", "weights", "data files"):
        assert data in section
