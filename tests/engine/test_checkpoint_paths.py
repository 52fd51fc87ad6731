"""One save/resume path for both checkpoint kinds: the same tests for a plain run (``iter_N.pth`` files)
and a one-rank DeepSpeed ZeRO-2 run (``iter_N.pth/`` folders), see :mod:`xtune.engine.checkpointing`.

- A non-finite step is never saved and ``last_checkpoint`` keeps naming the last finite checkpoint.
- ``--resume auto`` skips a damaged newest checkpoint, resumes the newest valid one and ends on the
  weights of the uninterrupted run; the config text a checkpoint's meta holds is never run.

The DeepSpeed runs are subprocesses (DeepSpeed starts a process group that must not outlive a run).
"""

from pathlib import Path

import pytest
import torch

from xtune.checkpoint.files import read_pointer
from xtune.convert.zero import load_zero_checkpoint
from xtune.engine.checkpointing import load_checkpoint_file
from xtune.engine.checkpoints import find_resume_checkpoint
from xtune.testing.training import max_difference, train, train_ranks

pytestmark = pytest.mark.slow
LORA = "tiny_llama_lora_identity_e3"
BACKENDS = ["plain", "zero2"]


def _options(model, data, **extra) -> dict:
    return {
        "pretrained_model_name_or_path": str(model),
        "data_path": str(data),
        "data_format": "alpaca",
        "dtype": "fp32",
        "batch_size": 2,
        "accumulative_counts": 2,
        "max_epochs": 1,
        "lr": 1e-3,
        "save_steps": 1,
        "save_total_limit": 3,
        "evaluation_inputs": [],
        "max_length": 128,
        "model.lora.lora_dropout": 0.1,  # resume must restore the RNG to end on the same weights
        **extra,
    }


def _train(backend: str, work: Path, options: dict, capsys, *extra: str) -> tuple[int, str]:
    """``xtune train`` plain (in this process) or with ``--deepspeed zero2`` on one rank; status and output."""
    if backend == "plain":
        status = train(LORA, work, options, extra_args=list(extra))
        captured = capsys.readouterr()
        return status, captured.out + captured.err
    result = train_ranks(LORA, work, options, ["--deepspeed", "zero2", *extra], ranks=1, check=False)
    return result.returncode, result.stdout + result.stderr


def _weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A checkpoint's trainable weights, from a file or a ZeRO folder."""
    if Path(path).is_dir():
        return load_zero_checkpoint(path)
    return load_checkpoint_file(str(path))["state_dict"]


def _damage(path: Path) -> None:
    """The newest checkpoint, half-copied: a truncated file, or a folder missing its optimizer states."""
    if path.is_dir():
        for part in path.glob("*optim_states.pt"):
            part.unlink()
    else:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _put_code_in_meta(path: Path, marker: Path) -> None:
    """Config text in the checkpoint's meta that would create ``marker`` if anything ran it."""
    file = path / "mp_rank_00_model_states.pt" if path.is_dir() else path
    # the test's own file: a full unpickle is fine here (xtune itself never does one)
    checkpoint = torch.load(file, map_location="cpu", weights_only=False)
    code = f"_ = __import__('os').system('touch {marker}')\nopen('{marker}', 'w').close()\n"
    checkpoint["meta"]["config"] = code  # what mmengine's resume runs
    checkpoint["meta"]["cfg"] = code
    torch.save(checkpoint, file)


@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_auto_takes_the_newest_valid_checkpoint_runs_no_meta_code_and_ends_on_the_same_weights(
    backend, tiny_llama, alpaca_file, tmp_path, capsys
):
    work = tmp_path / "run"
    options = _options(tiny_llama, alpaca_file)
    status, output = _train(backend, work, options, capsys)
    assert status == 0, output[-3000:]
    names = sorted(p.name for p in work.glob("iter_*.pth"))
    assert names == ["iter_4.pth", "iter_6.pth", "iter_8.pth"]  # rotated to save_total_limit=3
    assert (work / "iter_8.pth").is_dir() == (backend == "zero2")
    newest = work / "iter_8.pth"
    assert read_pointer(work) == str(newest)
    finished = _weights(newest)

    _damage(newest)
    marker = tmp_path / "RAN"
    _put_code_in_meta(work / "iter_6.pth", marker)
    found, skipped = find_resume_checkpoint(work)
    assert found == str(work / "iter_6.pth") and [path for path, _ in skipped] == [str(newest)]

    status, output = _train(backend, work, options, capsys, "--resume", "auto")
    assert status == 0, output[-3000:]
    assert f"resuming from {work / 'iter_6.pth'}" in output and "resumed epoch: 0, iter: 6" in output
    assert not marker.exists()
    assert read_pointer(work) == str(newest)
    assert max_difference(finished, _weights(newest)) < 1e-6
    assert not list(work.glob("*.tmp*"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_non_finite_step_is_never_saved_and_last_checkpoint_stays_finite(
    backend, tiny_llama, alpaca_file, tmp_path, capsys
):
    # lr=1e30: the first step leaves huge weights and the next loss is not finite; a save after every step
    options = _options(tiny_llama, alpaca_file, lr=1e30, max_norm=None, accumulative_counts=1, save_total_limit=-1)
    options["model.lora.lora_dropout"] = 0.0
    status, output = _train(backend, tmp_path, options, capsys)
    assert status == 2, output[-3000:]
    saved = sorted(tmp_path.glob("iter_*.pth"), key=lambda p: int(p.name[5:-4]))
    assert saved, "the first, finite step should have been saved"
    for path in saved:
        assert all(torch.isfinite(value).all() for value in _weights(path).values()), path
    kept = read_pointer(tmp_path)
    assert kept == str(saved[-1]) and find_resume_checkpoint(tmp_path) == (kept, [])
    assert f"the last good checkpoint, {kept}, is kept" in output and "nothing was saved from it" in output
