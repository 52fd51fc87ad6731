"""benchmarks/serve_speed.py end to end against the shared test server (a smoke run, not a timing)."""

import importlib.util
import json
from pathlib import Path

from tests.serve.conftest import MODEL

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "serve_speed.py"


def test_the_benchmark_measures_every_client_level(server, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("serve_speed", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "serve.json"
    argv = ["--url", server.url, "--name", MODEL, "--clients", "1,3", "--requests", "2", "--max-tokens", "5"]
    assert bench.main([*argv, "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [row["clients"] for row in rows] == [1, 3]
    for row in rows:
        assert row["errors"] == [] and row["requests"] == 2 * row["clients"]
        assert row["output_tokens"] == 5 * row["requests"]  # ignore_eos: every answer is max_tokens long
        assert row["requests_per_s"] > 0 and row["output_tokens_per_s"] > 0
    assert "| 3 | 6 |" in capsys.readouterr().out
