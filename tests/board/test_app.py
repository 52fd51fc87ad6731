"""What the Watch tab says about a run, from its work dir (no browser)."""

import json

from xtune.board.app import Board, loss_frame, progress_text


def test_a_crashed_run_names_its_error(tmp_path):
    run = tmp_path / "crashed"
    run.mkdir()
    (run / "board_run.json").write_text(json.dumps({"command": "xtune train x", "returncode": 1}))
    (run / "board_train.log").write_text(
        "Iter(train) [10/40]  eta: 0:00:30  loss: 2.0  tokens_per_sec: 100.0\n"
        "Traceback (most recent call last):\n  File 'x.py', line 1\nRuntimeError: CUDA out of memory\n"
    )
    text = progress_text(Board(tmp_path), "crashed")
    assert text.startswith("**crashed**: failed (exit 1) · iteration 10/40 (25%) · 100 tokens/s · loss 2.0000")
    assert "**Training failed.** RuntimeError: CUDA out of memory" in text
    assert "ETA" not in text  # only a running run has one


def test_loss_curves_of_several_runs_share_one_frame(tmp_path):
    for name, losses in (("a", [3.0, 2.0]), ("b", [4.0])):
        folder = tmp_path / name / "20260101_000000" / "vis_data"
        folder.mkdir(parents=True)
        rows = [json.dumps({"loss": loss, "step": 5 * (i + 1)}) for i, loss in enumerate(losses)]
        (folder / "scalars.json").write_text("\n".join(rows) + "\n")
    frame = loss_frame(Board(tmp_path), ["a", "b"])
    assert frame.values.tolist() == [[5, 3.0, "a"], [10, 2.0, "a"], [5, 4.0, "b"]]
