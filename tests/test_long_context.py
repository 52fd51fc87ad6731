"""benchmarks/long_context.py: the search finds the longest length that trains, and the CPU smoke run
exercises every variant (checkpointing, activation offload, full logits, none) end to end."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "long_context.py"


def _load():
    spec = importlib.util.spec_from_file_location("long_context", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_search_doubles_then_bisects_to_the_resolution(monkeypatch):
    bench = _load()
    tried = []

    def fits(model, optimizer, length, device):
        tried.append(length)
        return length <= 5000

    monkeypatch.setattr(bench, "_fits", fits)
    good, bad = bench.longest(None, None, "cpu", start=1024, max_len=262144, resolution=512)
    assert 5000 - 512 < good <= 5000 < bad and bad - good <= 512
    assert tried[:4] == [1024, 2048, 4096, 8192]
    assert bench.longest(None, None, "cpu", start=1024, max_len=3000, resolution=512) == (3000, None)


@pytest.mark.slow
def test_the_cpu_smoke_run_trains_every_variant(tmp_path, capsys):
    bench = _load()
    out = tmp_path / "long.json"
    argv = ["--shape", "tiny", "--start", "64", "--max-len", "128", "--resolution", "64", "--cache", str(tmp_path),
            "--out", str(out)]  # fmt: skip
    assert bench.main(argv) == 0
    rows = {row["variant"]: row for row in json.loads(out.read_text())["rows"]}
    assert set(rows) == set(bench.VARIANTS)
    for row in rows.values():
        assert row["longest"] == 128 and row["first_failure"] is None and row["tokens_per_sec"] > 0
    assert "| tiny | lora | ckpt+offload | 128 |" in capsys.readouterr().out
