"""The Train form -> config and command (no browser)."""

import shlex

import pytest

from xtune.board.form import NEW_CONFIG, TrainForm, form_from_config, plan_run
from xtune.board.stages import STAGES
from xtune.config import load_config, parse_cfg_options
from xtune.errors import ConfigError

CONFIG = "tiny_llama_lora_identity_e3"


def test_a_shipped_config_fills_the_form_with_its_knobs():
    form = form_from_config(CONFIG)
    assert (form.config, form.run_name, form.model, form.finetune_type) == (CONFIG, CONFIG, "tiny_llama", "lora")
    assert (form.lr, form.epochs, form.batch_size, form.lora_r, form.lora_alpha) == (5e-3, 3, 4, 16, 32)
    assert (form.data_path, form.name, form.packing, form.save_steps) == ("identity", "XTuneBot", False, 50)


def test_only_changed_knobs_become_cfg_options_and_the_command_resolves_to_them(tmp_path):
    form = form_from_config(CONFIG)
    assert plan_run(form, tmp_path).options == []
    form.lr, form.epochs, form.lora_r, form.lora_targets, form.name = "1e-4", 2, 8, "q_proj, v_proj", "Ada"
    form.gpus, form.deepspeed = 2, "zero2"
    plan = plan_run(form, tmp_path)
    assert plan.command() == (
        f"NPROC_PER_NODE=2 xtune train {CONFIG} --work-dir {tmp_path.resolve() / CONFIG} --deepspeed zero2 "
        "--cfg-options lr=0.0001 max_epochs=2 model.lora.r=8 \"model.lora.target_modules=['q_proj', 'v_proj']\" "
        "\"name='Ada'\""
    )
    # what the child will parse from that command line is what the form said
    args = shlex.split(plan.command().split(" ", 1)[1])
    cfg = load_config(CONFIG, parse_cfg_options(args[args.index("--cfg-options") + 1 :]))
    assert (cfg.lr, cfg.max_epochs, cfg.model.lora.r, cfg.train_dataset.placeholders.name) == (1e-4, 2, 8, "Ada")
    assert cfg.model.lora.target_modules == ["q_proj", "v_proj"]
    assert plan.resolved_config() == cfg.pretty_text


def test_every_problem_with_the_form_is_reported_at_once(tmp_path):
    form = form_from_config(CONFIG)
    form.lr, form.epochs, form.batch_size, form.run_name = "abc", 0, 1.5, "bad name/"
    form.data_path = str(tmp_path / "missing.json")
    with pytest.raises(ConfigError) as raised:
        plan_run(form, tmp_path)
    message = str(raised.value)
    for expected in (
        "lr must be a number, got 'abc'",
        "epochs must be a whole number >= 1, got '0'",
        "batch_size must be a whole number >= 1, got '1.5'",
        "run name must be letters, digits",
        f"dataset '{tmp_path / 'missing.json'}' not found",
    ):
        assert expected in message


def test_a_new_config_is_written_from_the_bases_and_trains_what_the_form_says(tmp_path):
    form = form_from_config(NEW_CONFIG, TrainForm(finetune_type="full", stage="pt", data_path="pretrain_demo"))
    assert (form.stage, form.data_path, form.packing) == ("pt", "pretrain_demo", True)
    form.max_length = 128
    plan = plan_run(form, tmp_path)
    assert plan.config == str(tmp_path.resolve() / form.run_name / "board_config" / f"{form.run_name}.py")
    assert plan.options == ["max_length=128"]
    plan.write_config()
    cfg = load_config(plan.config, parse_cfg_options(plan.options))
    assert cfg.model.finetune_type == "full" and cfg.data_format == "text" and cfg.max_length == 128
    assert STAGES["pt"].dataset_base.endswith("pretrain.py")


def test_an_unknown_stage_is_an_error():
    with pytest.raises(ConfigError, match="stage must be one of sft, pt"):
        form_from_config(NEW_CONFIG, TrainForm(stage="ppo"))
