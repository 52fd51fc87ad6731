"""A checkpoint is data: the config text mmengine stores in it is never run, by convert or by resume."""

import torch

from xtune.cli import main
from xtune.engine.runner import load_checkpoint_file


def _with_code_in_meta(source, target, marker, key: str = "cfg", model_text: str = "") -> None:
    """A copy of a real checkpoint whose ``meta[key]`` config text would ``touch MARKER`` if it ran."""
    checkpoint = load_checkpoint_file(str(source))
    checkpoint["meta"][key] = (
        f"_ = __import__('os').system('touch {marker}')\nopen('{marker}', 'w').close()\n{model_text}"
    )
    torch.save(checkpoint, target)


def test_pth_to_hf_reads_the_checkpoint_config_as_data(lora_run, tmp_path, capsys):
    marker, crafted = tmp_path / "RAN", tmp_path / "iter_crafted.pth"
    # the literal model dict is still read: a base that differs gives the usual warning
    model_text = "model = dict(type='SupervisedFinetune', finetune_type='lora', pretrained_model_name_or_path='x/y')\n"
    _with_code_in_meta(lora_run.checkpoint, crafted, marker, model_text=model_text)
    assert main(["convert", "pth_to_hf", str(lora_run.config), str(crafted), str(tmp_path / "hf")]) == 0
    assert not marker.exists()
    err = capsys.readouterr().err
    assert "warning" in err and "'x/y'" in err
    assert (tmp_path / "hf" / "adapter_model.safetensors").is_file()


def test_resume_never_runs_the_config_text_of_a_checkpoint(lora_run, tmp_path):
    """mmengine's resume runs ``meta['config']`` (to compare GPU counts); xtune drops that text first."""
    marker, work = tmp_path / "RAN", tmp_path / "work"
    work.mkdir()
    crafted = work / lora_run.checkpoint.name
    _with_code_in_meta(lora_run.checkpoint, crafted, marker, key="config")
    assert main(["train", str(lora_run.config), "--work-dir", str(work), "--resume", str(crafted)]) == 0
    assert not marker.exists()


def test_an_adapter_whose_bin_weights_hold_code_is_refused(lora_run, lora_adapter, tmp_path, capsys):
    import os
    import shutil

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    marker, adapter = tmp_path / "RAN", tmp_path / "adapter"
    shutil.copytree(lora_adapter, adapter)
    (adapter / "adapter_model.safetensors").unlink()
    torch.save({"payload": Payload()}, adapter / "adapter_model.bin")
    assert main(["convert", "merge", str(lora_run.base), str(adapter), str(tmp_path / "merged")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "xtune: error: the adapter" in err
    assert "posix.system" in err and not marker.exists() and not (tmp_path / "merged").exists()
