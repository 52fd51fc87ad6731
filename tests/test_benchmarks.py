"""The benchmark scripts end to end on the CPU.

train_speed.py: every case runs, tokens are counted right, and the fast loss path trains exactly as
the full-logits path does. engine_checks.py: training with and without DeepSpeed converts to folders
that plain transformers and peft load.
"""

import importlib.util
import json
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load_script(name: str = "train_speed"):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_cpu_smoke_run_measures_xtune_and_both_baselines(tmp_path, capsys):
    bench = _load_script()
    out = tmp_path / "bench.json"
    argv = ["--shape", "tiny", "--device", "cpu", "--modes", "lora,full", "--seq-lens", "128", "--steps", "3",
            "--warmup", "1", "--tokens-per-step", "512", "--compare-loss", "--cache", str(tmp_path),
            "--out", str(out)]  # fmt: skip
    assert bench.main(argv) == 0
    report = json.loads(out.read_text())
    rows = {(row["mode"], row["impl"] + row["variant"]): row for row in report["rows"]}
    assert set(rows) == {
        (mode, impl) for mode in ("lora", "full") for impl in ("xtune", "xtune-plain", "hf_padded", "hf_full_rows")
    }
    for key, row in rows.items():
        assert "error" not in row, (key, row.get("error"))
        assert row["tokens_per_sec"] > 0 and len(row["losses"]) == 4  # warm-up step included
    for mode in ("lora", "full"):
        # 4 rows of exactly 128 tokens per step, 3 timed steps
        assert rows[mode, "hf_full_rows"]["tokens"] == 3 * 4 * 128
        # padded batches of 4 alpaca-like samples: padding is not counted
        assert 0 < rows[mode, "hf_padded"]["tokens"] < 3 * 4 * 128
        # packed rows hold at most 128 tokens each, 4 per step
        assert 3 * 128 < rows[mode, "xtune"]["tokens"] <= 3 * 4 * 128
        # the chunked loss trains the same weights as the full logits (fp32 on this CPU)
        assert rows[mode, "xtune"]["losses"] == pytest.approx(rows[mode, "xtune-plain"]["losses"], rel=1e-5)
    # the full model has more matmul parameters than what LoRA's FLOPs count (the same base)
    assert rows["full", "xtune"]["matmul_parameters"] == rows["full", "hf_padded"]["matmul_parameters"]
    # every case ran what it says: checkpointing really on (the baselines in training mode), the loss path
    for key, row in rows.items():
        assert row["settings"]["gradient_checkpointing"] is True, key
    assert rows["lora", "xtune"]["settings"]["loss_chunk_size"] == 1024
    assert rows["lora", "xtune-plain"]["settings"]["attn_implementation"] == "sdpa"
    assert rows["lora", "xtune"]["settings"]["optimizer"] == "AdamW (fused)"
    assert rows["lora", "hf_padded"]["settings"]["optimizer"] == "AdamW (for-loop)"  # torch's default on a CPU
    assert {entry["case"] for entry in report["summary"]} == {"xtune", "xtune-plain", "hf_padded", "hf_full_rows"}
    assert all(0 <= row["load_before"] for row in report["rows"])
    assert "vs padded" in capsys.readouterr().out


def test_engine_checks_train_convert_and_load_with_and_without_deepspeed(tmp_path, capsys):
    checks = _load_script("engine_checks")
    out = tmp_path / "engine.json"
    argv = ["--shape", "tiny", "--device", "cpu", "--runs", "lora,full:zero2", "--seq", "128", "--rows", "2",
            "--steps", "2", "--cache", str(tmp_path), "--out", str(out)]  # fmt: skip
    assert checks.main(argv) == 0
    rows = {row["run"]: row for row in json.loads(out.read_text())["rows"]}
    assert rows["lora"]["output_kind"] == "adapter" and rows["full:zero2"]["output_kind"] == "model"
    for row in rows.values():
        assert row["iters"] == 2 and row["tokens"] > 128
        assert row["logits_finite"] and row["changed_by_training"] > 1e-4
    assert rows["lora"]["output_mib"] < rows["full:zero2"]["output_mib"]  # the adapter alone
    assert "loads" in capsys.readouterr().out


def test_synthetic_words_encode_to_one_token_each(tmp_path):
    from transformers import AutoTokenizer

    from xtune.paths import MODEL_DIR

    bench = _load_script()
    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR / "tiny_llama")
    documents = json.loads(bench.make_documents(tmp_path / "docs.json", count=3, tokens=500).read_text())
    lengths = [len(tokenizer(row["text"], add_special_tokens=False)["input_ids"]) for row in documents]
    assert all(500 <= n <= 502 for n in lengths), lengths  # the first word has no leading space
    rows = json.loads(bench.make_rows(tmp_path / "rows.json", count=200).read_text())
    answers = sorted(len(row["output"].split()) for row in rows)
    assert 60 < answers[100] < 200 and answers[-1] <= 1500  # median ~110 tokens, capped


def test_the_cpu_shape_records_every_speed_switch_on_and_off(tmp_path):
    import argparse

    bench = _load_script()
    assert bench.SHAPES["cpu"] == {"hidden_size": 512, "num_hidden_layers": 8, "num_attention_heads": 8,
                                   "num_key_value_heads": 4, "intermediate_size": 1408, "vocab_size": 3008}  # fmt: skip
    assert bench.SHAPE_DEFAULTS["cpu"]["seq_lens"] == "512" and bench.SHAPE_DEFAULTS["cpu"]["tokens_per_step"] == 4096
    args = argparse.Namespace(compare_loss=False, switches="all", device="cpu")
    variants = bench.variants_of(args, list(bench.IMPLS))
    # the main comparison first (a run cut short keeps it), then every switch flipped
    assert [impl + extra.get("variant", "") for impl, extra in variants] == [
        "xtune", "hf_padded", "hf_full_rows", "xtune-no_chunk", "xtune-unfused", "xtune-compiled",
        "xtune-dense_mask", "xtune-ckpt_auto", "xtune-loader_worker",
    ]  # fmt: skip
    # on CUDA attention's default is sdpa: its flipped cases are attention per sample and FlexAttention
    cuda = bench.variants_of(argparse.Namespace(compare_loss=False, switches="all", device="cuda"), ["xtune"])
    assert [extra.get("variant", "") for _, extra in cuda] == [
        "", "-no_chunk", "-unfused", "-compiled", "-varlen", "-flex", "-ckpt_auto", "-loader_worker",
    ]  # fmt: skip
    flipped = {
        "-no_chunk": "loss_chunk_size=0",
        "-unfused": "optim_wrapper.optimizer.fused=False",
        "-compiled": "compile_layers=True",
        "-dense_mask": "model.attn_implementation='sdpa'",
        "-varlen": "model.attn_implementation='xtune_varlen'",
        "-flex": "model.attn_implementation='flex_attention'",
        "-ckpt_auto": "gradient_checkpointing='auto'",
        "-loader_worker": "dataloader_num_workers=1",
    }
    base = {"model": "m", "data": "d", "dtype": "fp32", "seq": 512, "rows_per_step": 8, "checkpointing": True,
            "warmup": 1, "steps": 1, "mode": "lora"}  # fmt: skip
    defaults = bench.xtune_train_argv(base, tmp_path)
    for _impl, extra in variants[3:] + cuda[1:]:
        argv = bench.xtune_train_argv({**base, **extra}, tmp_path)
        assert flipped[extra["variant"]] in argv and flipped[extra["variant"]] not in defaults


def test_rounds_rotate_and_ratios_are_taken_within_each_round():
    bench = _load_script()
    cases = ["a", "b", "c"]
    assert [bench.rotated(cases, r) for r in (1, 2, 3, 4)] == [
        ["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]
    ]  # fmt: skip

    def row(impl, round_, speed, variant=""):
        return {"mode": "lora", "seq": 512, "impl": impl, "variant": variant, "round": round_, "tokens_per_sec": speed}

    # round 2 ran on a machine twice as busy: every case half as fast, the ratios unchanged
    rows = [row("xtune", 1, 300.0), row("hf_padded", 1, 200.0), row("hf_full_rows", 1, 400.0),
            row("xtune", 2, 150.0), row("hf_padded", 2, 100.0), row("hf_full_rows", 2, 200.0),
            row("xtune", 3, 330.0), row("hf_padded", 3, 200.0), row("hf_full_rows", 3, 300.0),
            row("xtune", 1, 10.0, "-ckpt_auto"), {**row("xtune", 2, 0.0, "-ckpt_auto"), "error": "oom"}]  # fmt: skip
    summary = {entry["case"]: entry for entry in bench.summarize(rows)}
    assert summary["xtune"]["tokens_per_sec"] == 300.0  # median of 300, 150, 330
    assert summary["xtune"]["vs_padded"] == 1.5  # median of 1.5, 1.5, 1.65
    assert summary["xtune"]["vs_padded_range"] == [1.5, 1.65]
    assert summary["xtune"]["vs_full_rows"] == 0.75  # median of 0.75, 0.75, 1.1
    assert summary["hf_padded"]["vs_padded"] == 1.0
    assert summary["xtune-ckpt_auto"]["rounds"] == 2 and summary["xtune-ckpt_auto"]["errors"] == 1
    assert summary["xtune-ckpt_auto"]["vs_padded"] == 0.05  # its one good round, against that round's baseline
    assert "1.50x [1.50-1.65]" in bench.summary_table(list(summary.values()))


def test_switch_parity_passes_where_the_numbers_agree_and_catches_where_they_do_not(tmp_path):
    parity = _load_script("switch_parity")
    out = tmp_path / "parity.json"
    assert parity.main(["--device", "cpu", "--switches", "chunked_loss,flex_attention", "--out", str(out)]) == 0
    rows = {row["switch"]: row for row in json.loads(out.read_text())["rows"]}
    assert rows["chunked_loss"]["ran"] and rows["chunked_loss"]["ok"]
    assert rows["chunked_loss"]["vector_error"] < 1e-5 and rows["chunked_loss"]["loss"] > 0
    assert not rows["flex_attention"]["ran"] and "cuda" in rows["flex_attention"]["why"]  # no CPU backward
    # the verdicts: fp32 is rounding or nothing; low precision may be as far from fp32 as the plain path is
    import torch

    plain = (2.0, torch.linspace(-1, 1, 100))
    assert parity.judge("fp32", (2.0, plain[1] * (1 + 1e-6)), plain, None)["ok"]
    assert not parity.judge("fp32", (2.0, plain[1] * (1 + 1e-3)), plain, None)["ok"]
    assert not parity.judge("fp32", (2.001, plain[1]), plain, None)["ok"]
    exact = (2.0, plain[1] * (1 + 1e-2))  # the plain path in fp32, 1% from the low-precision plain run
    assert parity.judge("bf16", (2.0, plain[1] * (1 - 1e-2)), plain, exact)["ok"]
    assert not parity.judge("bf16", (2.0, plain[1] * (1 - 5e-2)), plain, exact)["ok"]


def test_the_gpu_session_script_runs_its_steps_on_the_cpu(tmp_path):
    """The prepared device call (benchmarks/gpu_session.sh) in its CPU form: both steps run and write their results."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "XTUNE_GPU_SESSION_SMOKE": "1", "PYTHON": sys.executable, "OUT": str(tmp_path / "out"),
           "PYTHONPATH": str(BENCHMARKS.parent)}  # fmt: skip
    script = str(BENCHMARKS / "gpu_session.sh")
    done = subprocess.run(["bash", script], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    parity = json.loads((tmp_path / "out" / "parity.json").read_text())
    assert [(row["switch"], row["ok"]) for row in parity["rows"]] == [("varlen", True)]
    speed = json.loads((tmp_path / "out" / "speed.json").read_text())
    assert [row["impl"] + row["variant"] for row in speed["rows"]] == ["xtune"]
    assert speed["rows"][0]["tokens_per_sec"] > 0
    assert "median tok/s" in done.stdout  # the table is printed last, for the device tool's output tail


def test_loss_memory_measures_both_loss_paths_on_the_same_numbers(tmp_path):
    bench = _load_script("loss_memory")
    out = tmp_path / "loss.json"
    argv = ["--tokens", "64", "--hidden", "16", "--vocab", "500", "--chunks", "0,8", "--out", str(out)]
    assert bench.main(argv) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [row["chunk"] for row in rows] == [0, 8]
    assert rows[0]["loss"] == pytest.approx(rows[1]["loss"], rel=1e-5)
    assert all(row["seconds"] > 0 and row["peak_mib"] >= 0 for row in rows)
    # the chunked loss given the trained count, as training gives it: the same rows, the same loss
    assert bench.main([*argv[:-4], "--chunks", "8", "--host-count", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["rows"][0]["loss"] == rows[1]["loss"]


def test_host_syncs_counts_the_reads_of_each_training_step(capsys):
    syncs = _load_script("host_syncs")
    assert syncs.main(["tiny_llama_lora_identity_e3", "--steps", "2"]) == 0
    out = capsys.readouterr().out
    table = out[out.index("reads back to the host per training step") :].splitlines()[1:]
    rates = {line.split(None, 2)[2]: float(line.split()[0]) for line in table if line.strip()}
    # mmengine's logging reads the loss once a step; the sampler's permutation runs once per epoch
    assert rates["message_hub.py:346 value = value.item()"] == 1.0
    assert any("sampler.py" in where and rate == 0.5 for where, rate in rates.items())
    # the chunked loss finds its trained rows from the loop's count, and the loss curve reuses the logged
    # loss: neither reads back from the device any more
    assert not [where for where in rates if where.startswith(("loss.py", "info.py"))], rates
