"""Train, convert and load each finetuning type, with and without DeepSpeed, on one GPU (or CPU).

Every run ``TYPE[:DEEPSPEED]`` (``qlora``, ``full:zero2``, ``lora:zero3``, ``qlora:zero3``, ...) is, in
child processes: ``xtune train`` for a few steps on the benchmark's random-init model and alpaca-like
data (``benchmarks/train_speed.py``), ``xtune convert pth_to_hf`` of its last checkpoint, then a load of
the result with plain transformers (and peft for adapters) and a forward pass. Records tokens/s and
peak memory from ``throughput.json``, the conversion's time and size, and whether the converted
weights load, give finite logits and differ from the untrained model. Prints a table, writes JSON.

Examples::

    # on the GPU machine (issues 4 and 5)
    python benchmarks/engine_checks.py --shape 1.5b \\
        --runs qlora,full:zero2,full:zero3,lora:zero2,lora:zero3,qlora:zero3 --out engine.json
    # the same flow on a CPU, tiny model
    python benchmarks/engine_checks.py --shape tiny --device cpu --runs lora,full:zero2
"""

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_speed  # noqa: E402  (the benchmark's model, data and config builders)


def _xtune(args: list[str], log: Path) -> int:
    status, _ = train_speed.run_logged([sys.executable, "-m", "xtune", *args], log, f"xtune {' '.join(args[:3])}")
    return status


def check_output(output: Path, base_model: Path, device: str) -> dict:
    """Load the converted folder without xtune; compare its logits with the untrained model's."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    adapter = (output / "adapter_config.json").exists()
    ids = torch.arange(3, 67).unsqueeze(0).to(device)
    base = AutoModelForCausalLM.from_pretrained(base_model, dtype=dtype).to(device)
    with torch.no_grad():
        before = base(input_ids=ids).logits.float()
        if adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(base, output)
        else:
            del base
            model = AutoModelForCausalLM.from_pretrained(output, dtype=dtype).to(device)
        after = model(input_ids=ids).logits.float()
    return {
        "output_kind": "adapter" if adapter else "model",
        "output_mib": sum(f.stat().st_size for f in output.rglob("*") if f.is_file()) / 2**20,
        "logits_finite": bool(torch.isfinite(after).all()),
        "changed_by_training": float((after - before).abs().max()),
    }


def run_one(run: str, model: Path, data: Path, args, log: Path) -> dict:
    """Train, convert and check one ``TYPE[:DEEPSPEED]`` run."""
    mode, _, deepspeed = run.partition(":")
    work = Path(args.cache) / "engine" / run.replace(":", "_")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    case = {
        "mode": mode, "seq": args.seq, "model": str(model), "data": str(data), "rows_per_step": args.rows,
        "dtype": "bf16" if args.device == "cuda" else "fp32", "checkpointing": True, "warmup": 2,
        "steps": args.steps, "save_last": True,
    }  # fmt: skip
    argv = train_speed.xtune_train_argv(case, work)
    if deepspeed:
        argv += ["--deepspeed", deepspeed]
    result = {"run": run, "finetune_type": mode, "deepspeed": deepspeed or None}
    if _xtune(argv, log) != 0:
        return {**result, "error": "training failed (see the log)"}
    run_dir = work / "run"
    result.update(json.loads((run_dir / "throughput.json").read_text()))
    checkpoint = (run_dir / "last_checkpoint").read_text().strip()
    start = time.perf_counter()
    output = work / "hf"
    if _xtune(["convert", "pth_to_hf", str(run_dir / Path(argv[1]).name), checkpoint, str(output)], log) != 0:
        return {**result, "error": "conversion failed (see the log)"}
    result["convert_seconds"] = time.perf_counter() - start
    result.update(check_output(output, model, args.device))
    return result


def table(rows: list[dict]) -> str:
    """One line a run."""
    head = f"{'run':<14} {'tokens/s':>10} {'peak GiB':>9} {'convert s':>9} {'output':>8} {'MiB':>9} {'loads':>6}"
    lines = [head, "-" * len(head)]
    for row in rows:
        if "error" in row:
            lines.append(f"{row['run']:<14} error: {row['error']}")
            continue
        memory = f"{row['peak_memory_gib']:.1f}" if row.get("peak_memory_gib") is not None else "-"
        loads = "yes" if row["logits_finite"] and row["changed_by_training"] > 0 else "NO"
        lines.append(
            f"{row['run']:<14} {row['tokens_per_sec']:>10,.0f} {memory:>9} {row['convert_seconds']:>9.1f} "
            f"{row['output_kind']:>8} {row['output_mib']:>9.1f} {loads:>6}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(train_speed.SHAPES), default="1.5b")
    parser.add_argument("--runs", default="qlora,full:zero2,full:zero3,lora:zero2,lora:zero3,qlora:zero3")
    parser.add_argument("--seq", type=int, default=2048, help="tokens per packed row")
    parser.add_argument("--rows", type=int, default=4, help="packed rows per step")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (after 2 untimed)")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--cache", default="/tmp/xtune_bench")
    parser.add_argument("--out", default=None, help="JSON file for the results")
    args = parser.parse_args(argv)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    model = train_speed.make_model(args.shape, cache, args.device)
    data = train_speed.make_rows(cache / "alpaca_like.json", count=4000)
    log = cache / "engine.log"
    rows = []
    for run in args.runs.split(","):
        rows.append(run_one(run, model, data, args, log))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "losses"}), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=2))
    print(table(rows))
    return 0 if all("error" not in row for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
