"""DPO under DeepSpeed ZeRO-2 and ZeRO-3 on 2 CPU ranks ends on the weights one process trains.

2 ranks x 2 pairs and 1 process x 4 pairs see the same pairs per micro-batch (the sampler gives rank r the
items r, r+2, ...); the reference pass runs on both ranks in step and the loss is the mean over the step's
pairs, so the weights (read from the ZeRO folder) must agree.
"""

import json
import os
import subprocess
import sys

import pytest

from xtune.convert.zero import load_zero_checkpoint
from xtune.paths import DATASET_INFO
from xtune.testing.training import PARITY_OPTIONS, cfg_options, final_weights, max_difference, train

pytestmark = pytest.mark.slow

FULL = "tiny_llama_full_dpo_preference_e3"


def _options(model, data, batch_size: int) -> dict:
    return {
        **PARITY_OPTIONS,
        "pretrained_model_name_or_path": str(model),
        "data_path": str(data),
        "data_format": "alpaca",
        "max_length": 256,
        "batch_size": batch_size,
        "accumulative_counts": 2,
        "lr": 1e-3,
        "max_epochs": 1,
    }


@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_two_rank_zero_dpo_equals_one_process(tiny_llama, tmp_path, stage):
    rows = json.loads((DATASET_INFO.parent / "preference_demo.json").read_text())[:16]
    data = tmp_path / "pairs16.json"
    data.write_text(json.dumps(rows))
    single = tmp_path / "single"
    assert train(FULL, single, _options(tiny_llama, data, 4)) == 0
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")}
    env.update(NPROC_PER_NODE="2", OMP_NUM_THREADS="1")
    work = tmp_path / stage
    command = [sys.executable, "-m", "xtune", "train", FULL, "--work-dir", str(work), "--deepspeed", stage]
    command += ["--cfg-options", *cfg_options(_options(tiny_llama, data, 2))]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    folder = (work / "last_checkpoint").read_text().strip()
    ours = {k.removeprefix("llm."): v for k, v in load_zero_checkpoint(folder).items()}
    expected = final_weights(single)
    assert max_difference(expected, ours) < 1e-5
