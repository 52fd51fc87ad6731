"""Experiment trackers: TensorBoard beside scalars.json by default, others by one knob, never required."""

import importlib.util
import json
from pathlib import Path

import pytest

from xtune.engine.visualizer import TrackerVisualizer, tracker_backends
from xtune.errors import ConfigError
from xtune.testing.training import train


def test_tensorboard_is_on_by_default_beside_scalars_json(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    options = {"max_epochs": 1, "log_interval": 1, "evaluation_inputs": [], "save_steps": 10**6}
    options |= {"max_length": 128, "pack_to_max_length": True, "batch_size": 8, "dtype": "fp32"}
    assert train("tiny_llama_lora_identity_e3", tmp_path, options) == 0
    (scalars,) = tmp_path.rglob("scalars.json")
    losses = [json.loads(line)["loss"] for line in scalars.read_text().splitlines() if '"loss"' in line]
    events = list(tmp_path.rglob("events.out.tfevents.*"))
    assert events, sorted(str(p) for p in tmp_path.rglob("*"))
    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    logged = [event.value for event in accumulator.Scalars("loss")]
    assert logged == pytest.approx(losses, rel=1e-5) and losses


def test_report_to_picks_backends():
    assert tracker_backends("none") == [{"type": "LocalVisBackend"}]
    assert tracker_backends(["tensorboard"])[1] == {"type": "TensorboardVisBackend"}
    with pytest.raises(ConfigError, match="unknown tracker 'comet'"):
        tracker_backends("tensorboard,comet")


@pytest.mark.parametrize("name", ["wandb", "mlflow", "swanlab"])
def test_a_tracker_that_is_not_installed_says_what_to_install(name, tmp_path):
    if importlib.util.find_spec(name) is not None:
        pytest.skip(f"{name} is installed here")  # then the backend itself is used
    with pytest.raises(ConfigError, match=f"pip install {name}"):
        TrackerVisualizer(name=f"v_{name}", report_to=name, save_dir=str(Path(tmp_path)))
