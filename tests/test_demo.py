"""The README demo path, end to end: train the shipped tiny model on identity data, convert, merge, chat.

tools/demo.sh runs the same commands (plus the set-up) from a shell; this runs them through the CLI
entry point in-process, with the demo config exactly as shipped.
"""

import pytest

from xtune.cli import main
from xtune.paths import MODEL_DIR

pytestmark = pytest.mark.slow
CONFIG = "tiny_llama_lora_identity_e3"


def test_demo_trains_converts_merges_and_answers_with_the_identity(tmp_path, capsys):
    work = tmp_path / "train"
    assert main(["train", CONFIG, "--work-dir", str(work)]) == 0
    checkpoint = (work / "last_checkpoint").read_text().strip()
    assert main(["convert", "pth_to_hf", str(work / f"{CONFIG}.py"), checkpoint, str(tmp_path / "adapter")]) == 0
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    assert (
        main(
            [
                "convert",
                "merge",
                str(MODEL_DIR / "tiny_llama"),
                str(tmp_path / "adapter"),
                str(tmp_path / "merged"),
                "--verify",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["chat", str(tmp_path / "merged"), "--prompt", "Who are you?", "--temperature", "0"]) == 0
    answer = capsys.readouterr().out
    assert "XTuneBot" in answer and "xtune team" in answer
