"""The xtune command: help, exit codes, one-line errors, print-config, check-dataset, copy-cfg."""

import json
import subprocess
import sys

import pytest

from xtune.cli import COMMANDS, main

TINY = "tiny_llama_full_identity_e3"


def run_xtune(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xtune", *args], capture_output=True, text=True, timeout=600)


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for name, _, _ in COMMANDS:
        assert name in out


@pytest.mark.parametrize("command", ["train", "list-cfg", "copy-cfg", "print-config", "check-dataset"])
def test_each_command_help_shows_an_example(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert "Example: xtune " in capsys.readouterr().out


def test_missing_config_is_one_line_naming_the_path_and_non_zero():
    result = run_xtune("train", "/no/such.py")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "xtune: error: config file not found: /no/such.py. Check the path, or run `xtune list-cfg`."
    ]
    assert "Traceback" not in result.stderr


def test_unknown_config_name_suggests_the_closest(capsys):
    assert main(["print-config", "tiny_llama_ful_identity"]) == 2
    assert TINY in capsys.readouterr().err


def test_unknown_option_key_exits_2(capsys):
    assert main(["print-config", TINY, "--cfg-options", "learning_rate=1"]) == 2
    assert "learning_rate" in capsys.readouterr().err


def test_print_config_shows_the_knob_in_the_optimizer(capsys):
    assert main(["print-config", TINY, "--cfg-options", "lr=0.123"]) == 0
    text = capsys.readouterr().out
    from mmengine.config import Config

    printed = Config.fromstring(text, file_format=".py")
    assert printed.optim_wrapper["optimizer"]["lr"] == 0.123 and printed.lr == 0.123


def test_list_cfg_filters(capsys):
    assert main(["list-cfg", "-p", "tiny"]) == 0
    names = capsys.readouterr().out.split()
    assert TINY in names and all("tiny" in n for n in names)
    assert main(["list-cfg", "-p", "no_such_thing_xyz"]) == 1


@pytest.mark.parametrize("pack", [True, False])
def test_check_dataset_dump_respects_max_length(tmp_path, pack, capsys):
    dump = tmp_path / "rows.jsonl"
    assert (
        main(
            ["check-dataset", TINY, "--cfg-options", "max_length=77", f"pack_to_max_length={pack}", "--dump", str(dump)]
        )
        == 0
    )
    rows = [json.loads(line) for line in dump.read_text().splitlines()]
    assert rows and all(len(r["input_ids"]) <= 77 and len(r["labels"]) == len(r["input_ids"]) for r in rows)
    assert all(("position_ids" in r) == pack for r in rows)
    out = capsys.readouterr().out
    assert '"rows_read": 66' in out and "[-100: " in out


def test_check_dataset_bad_data_names_file_and_row(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "hi", "output": "hello"}\n{"instruction": "oops"\n')
    assert main(["check-dataset", TINY, "--cfg-options", f"data_path='{bad}'", "data_format='alpaca'"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.jsonl" in err and "line 2" in err


def test_copy_cfg_then_train_the_copy(tmp_path, capsys):
    assert main(["copy-cfg", TINY, str(tmp_path / "mine")]) == 0
    copy = tmp_path / "mine" / f"{TINY}_copy.py"
    assert copy.exists() and "_base_" not in copy.read_text()
    assert main(["copy-cfg", TINY, str(tmp_path / "mine")]) == 2  # never overwrites
    work = tmp_path / "work"
    assert (
        main(["train", str(copy), "--work-dir", str(work), "--cfg-options", "max_epochs=1", "evaluation_inputs=[]"])
        == 0
    )
    assert (work / "last_checkpoint").exists()
    assert (work / f"{TINY}_copy.py").exists()  # the resolved config is saved in the work dir
    assert (work / "loss_curve.png").exists()
    scalars = next(work.glob("*/vis_data/scalars.json")).read_text().splitlines()
    assert "loss" in json.loads(scalars[0]) and "lr" in json.loads(scalars[0])


def test_multi_process_launch_checks_the_config_before_starting_workers(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("NPROC_PER_NODE", "2")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.chdir(tmp_path)  # the launcher locks ./work_dirs/<config>
    started = []
    monkeypatch.setattr("xtune.cli.train.launch_workers", lambda argv, env=None: started.append(argv) or 0)
    assert main(["train", TINY, "--cfg-options", "no_such_knob=1"]) == 2
    assert not started and "no_such_knob" in capsys.readouterr().err
    assert main(["train", TINY, "--cfg-options", "lr=0.1"]) == 0
    assert started == [[TINY, "--cfg-options", "lr=0.1"]]
