"""Training speed and memory of xtune against plain transformers + peft, same model shape and data.

Each case runs in a child process of its own, so that its peak memory is its own:

- ``xtune``: the real path, ``xtune train`` on a config (Runner, hooks, packed rows of ``seq``
  tokens); its numbers come from ``throughput.json``, which the ThroughputHook writes.
- ``hf_padded``: transformers + peft as HF users write it: the same tokenised samples in batches of
  ``--batch`` padded to the longest, ``model(..., labels=...)``, fused torch AdamW.
- ``hf_full_rows``: the same loop fed rows of exactly ``seq`` tokens with no padding at all.

Tokens/s counts real (non-pad) tokens; FLOPs are counted the same way for every case
(:func:`xtune.engine.flops.training_flops`) and MFU is taken over the bf16 matmul peak
measured at the start of this run. Models are random-init Llama-architecture checkpoints written once
to ``--cache``; data are synthetic alpaca-like rows whose token lengths follow log-normal
distributions close to alpaca's (a short instruction, a longer answer).

Examples::

    # on the GPU machine
    python benchmarks/train_speed.py --shape 1.5b --modes lora,full --seq-lens 2048 --out bench.json
    # a CPU smoke run of every code path (tiny shape, fp32)
    python benchmarks/train_speed.py --shape tiny --device cpu --modes lora,full --seq-lens 128 --steps 3
    # the CPU shape (its own defaults: fp32, seq 512, 4096 tokens a step, 6 timed steps), every speed
    # switch on and off, all cases twice in turn
    python benchmarks/train_speed.py --shape cpu --switches --repeat 2
"""

import argparse
import gc
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHAPES = {
    # ~24M parameters: speed work measurable on any developer machine's CPU (docs/benchmarks.md)
    "cpu": {"hidden_size": 512, "num_hidden_layers": 8, "num_attention_heads": 8, "num_key_value_heads": 4,
            "intermediate_size": 1408, "vocab_size": 3008},
    "tiny": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
             "intermediate_size": 128, "vocab_size": 3008},
    # the shape of the baseline figure in issue 8: 1.50B parameters
    "1.5b": {"hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
             "intermediate_size": 8192, "vocab_size": 128256},
    # Llama-3-8B's shape
    "8b": {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
           "intermediate_size": 14336, "vocab_size": 128256},
}  # fmt: skip
# Defaults of the shapes meant for a CPU, where the general defaults (a GPU, 2048 tokens) do not fit.
SHAPE_DEFAULTS = {
    "cpu": {"device": "cpu", "seq_lens": "512", "tokens_per_step": 4096, "batch": 8, "steps": 6, "warmup": 2},
    "tiny": {"device": "cpu"},
}
GENERAL_DEFAULTS = {"device": "cuda", "seq_lens": "2048", "tokens_per_step": 8192, "batch": 4, "steps": 20, "warmup": 3}
# --switches: xtune once with its defaults and once with each speed switch flipped (name, case settings,
# devices). Attention's default differs by device (`auto`: xtune_varlen on a CPU, sdpa on CUDA), so its
# flipped cases do too.
SWITCHES = [
    ("-no_chunk", {"loss_chunk_size": 0}, ("cpu", "cuda")),  # full logits instead of the chunked loss
    ("-unfused", {"switch_options": {"optim_wrapper.optimizer.fused": False}}, ("cpu", "cuda")),  # for-each AdamW
    ("-compiled", {"switch_options": {"compile_layers": True}}, ("cpu", "cuda")),  # torch.compile of each layer
    ("-dense_mask", {"attn": "sdpa"}, ("cpu",)),  # packed rows through sdpa's dense block-diagonal mask
    ("-varlen", {"attn": "xtune_varlen"}, ("cuda",)),  # attention per sample: torch's varlen_attn
    ("-flex", {"attn": "flex_attention"}, ("cuda",)),  # FlexAttention's block-sparse mask from the positions
    ("-ckpt_auto", {"checkpointing": "auto"}, ("cpu", "cuda")),  # checkpointing decided by the memory estimate
    ("-loader_worker", {"switch_options": {"dataloader_num_workers": 1}}, ("cpu", "cuda")),  # collated in a worker
]
MODES = ("lora", "qlora", "full")
IMPLS = ("xtune", "hf_padded", "hf_full_rows")
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": "all-linear"}
LR = 1e-4


# ----------------------------------------------------------------------------------------- inputs
def make_model(shape: str, cache: Path, device: str) -> Path:
    """A random-init Llama checkpoint of ``shape`` in bf16 (fp32 for the CPU shapes), with the tiny tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = cache / f"llama_{shape}"
    if (path / "config.json").exists():
        return path
    staging = Path(tempfile.mkdtemp(dir=cache))
    config = LlamaConfig(
        **SHAPES[shape], max_position_embeddings=131072, rope_theta=500000.0, tie_word_embeddings=False
    )
    dtype = torch.float32 if shape in SHAPE_DEFAULTS else torch.bfloat16
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    model.save_pretrained(staging)
    tokenizer = REPO / "data" / "models" / "tiny_llama"
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        if (tokenizer / name).exists():
            shutil.copy(tokenizer / name, staging / name)
    staging.rename(path)
    return path


def _word_sampler(seed: int):
    """Random whole-word tokens of the tiny tokenizer: ``n`` of them encode to about ``n`` tokens."""
    import random

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(REPO / "data" / "models" / "tiny_llama")
    words = sorted(t[1:] for t in tokenizer.get_vocab() if t.startswith("Ġ") and t[1:].isalpha() and len(t) > 3)
    encoded = tokenizer([" " + word for word in words], add_special_tokens=False)["input_ids"]
    words = [word for word, ids in zip(words, encoded, strict=True) if len(ids) == 1]  # BPE keeps them whole
    rng = random.Random(seed)
    return rng, lambda n: " ".join(rng.choice(words) for _ in range(n))


def make_rows(path: Path, count: int, seed: int = 0) -> Path:
    """``count`` alpaca rows of whole-word tokens: instruction ~ LogNormal(median 30 tokens), output ~
    LogNormal(median 110), both capped at 1,500 (alpaca under a Llama-3 tokenizer: mean ~200 tokens)."""
    rng, words = _word_sampler(seed)

    def text(median: float, sigma: float) -> str:
        return words(min(1500, max(3, int(rng.lognormvariate(math.log(median), sigma)))))

    rows = [{"instruction": text(30, 0.8), "input": "", "output": text(110, 0.9)} for _ in range(count)]
    path.write_text(json.dumps(rows))
    return path


def make_documents(path: Path, count: int, tokens: int, seed: int = 0) -> Path:
    """``count`` plain-text rows of about ``tokens`` tokens each: one long sequence a row."""
    _, words = _word_sampler(seed)
    path.write_text(json.dumps([{"text": words(tokens)} for _ in range(count)]))
    return path


def measure_peak_tflops(device: str) -> float | None:
    """bf16 matmul TFLOP/s of an 8192^3 product on this GPU (None on a CPU)."""
    if device != "cuda":
        return None
    import torch

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start, reps = time.perf_counter(), 20
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * 8192**3 * reps / (time.perf_counter() - start) / 1e12


# ----------------------------------------------------------------------------------------- cases
def xtune_train_argv(case: dict, work: Path) -> list[str]:
    """The ``xtune train`` arguments of ``case``: a config of the shipped ``_base_`` parts, run dir ``work/run``."""
    from xtune.testing.training import cfg_options

    options = {
        "pretrained_model_name_or_path": case["model"],
        "data_path": case["data"],
        "data_format": case.get("data_format", "alpaca"),
        "dtype": case["dtype"],
        "max_length": case["seq"],
        "pack_to_max_length": True,
        "batch_size": case["rows_per_step"],
        "accumulative_counts": 1,
        "lr": LR,
        "param_scheduler": [],
        "gradient_checkpointing": case["checkpointing"],
        "train_cfg.max_epochs": None,
        "train_cfg.max_iters": case["warmup"] + case["steps"],
        "train_dataloader.sampler.seed": 0,
        "custom_hooks.1.warmup_iters": case["warmup"],
        "save_steps": 10**6,
        "default_hooks.checkpoint.save_last": case.get("save_last", False),
        "evaluation_inputs": [],
        "log_interval": 1,
        "loss_chunk_size": case.get("loss_chunk_size", 1024),
        "model.attn_implementation": case.get("attn", "auto"),
        **case.get("xtune_options", {}),
        **case.get("switch_options", {}),
    }
    if case["mode"] != "full":
        options["model.lora"] = LORA
    base = REPO / "configs" / "_base_"
    parts = [f"models/{case['mode']}.py", "datasets/sft.py", "schedules/cosine.py", "default_runtime.py"]
    config = work / f"bench_{case['mode']}.py"
    config.write_text(f"_base_ = {[str(base / part) for part in parts]!r}\n")
    return ["train", str(config), "--work-dir", str(work / "run"), "--cfg-options", *cfg_options(options)]


def run_xtune(case: dict, work: Path) -> dict:
    """``xtune train`` in this process; the ThroughputHook's summary and the loss curve."""
    from xtune.cli import main

    if main(xtune_train_argv(case, work)) != 0:
        raise RuntimeError("xtune train failed; see its log above")
    summary = json.loads((work / "run" / "throughput.json").read_text())
    losses = json.loads((work / "run" / "loss.json").read_text())["loss"]
    return {**summary, "losses": losses}


def _hf_model(case: dict):
    import torch
    from transformers import AutoModelForCausalLM

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[case["dtype"]]
    kwargs = {"dtype": dtype, "attn_implementation": "sdpa", "device_map": case["device"]}
    if case["mode"] == "qlora":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype
        )
    model = AutoModelForCausalLM.from_pretrained(case["model"], **kwargs)
    model.config.use_cache = False
    if case["checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if case["mode"] != "full":
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

        if case["mode"] == "qlora":
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=case["checkpointing"])
        model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **LORA))
    # from_pretrained returns the model in eval mode, where transformers skips gradient checkpointing
    # (and dropout): a training loop must say train(), as xtune's loop does.
    model.train()
    return model


def _hf_batches(case: dict) -> list[dict]:
    """The same tokenised samples as xtune's (unpacked, shuffled), or random full rows."""
    import torch

    steps = case["warmup"] + case["steps"]
    generator = torch.Generator().manual_seed(0)
    if case["impl"] == "hf_full_rows":
        ids = torch.randint(3, 3000, (steps, case["rows_per_step"], case["seq"]), generator=generator)
        return [{"input_ids": row, "attention_mask": torch.ones_like(row), "labels": row.clone()} for row in ids]
    from xtune.dataset import SFTDataset, sft_collate_fn

    dataset = SFTDataset(case["data"], case["model"], data_format=case["data_format"], max_length=case["seq"],
                         pack_to_max_length=False)  # fmt: skip
    order = torch.randperm(len(dataset), generator=generator).tolist()
    batch = case["batch"]
    batches = []
    for start in range(0, steps * batch, batch):
        items = [dataset[order[i % len(order)]] for i in range(start, start + batch)]
        collated = sft_collate_fn(items)
        batches.append({key: collated[key] for key in ("input_ids", "attention_mask", "labels")})
    return batches


def checkpointing_active(causal_lm) -> bool:
    """Whether transformers will recompute ``causal_lm``'s layers in backward: enabled and training."""
    enabled = getattr(causal_lm, "is_activation_checkpointing", None)
    if enabled is None:
        enabled = causal_lm.is_gradient_checkpointing
    return bool(enabled and causal_lm.training)


def run_hf(case: dict) -> dict:
    """The plain loop; the same accounting as the ThroughputHook."""
    import torch

    from xtune.engine.hooks.throughput import attention_width, matmul_parameters, training_flops

    model = _hf_model(case)
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = matmul_parameters(causal_lm)
    layers, width = causal_lm.config.num_hidden_layers, attention_width(causal_lm.config)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=LR, fused=case["device"] == "cuda")
    cuda = case["device"] == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    losses, tokens, flops, start = [], 0, 0.0, None
    for step, batch in enumerate(_hf_batches(case)):
        if step == case["warmup"]:
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
        batch = {key: value.to(case["device"]) for key, value in batch.items()}
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss))
        if start is not None:
            lengths = batch["attention_mask"].sum(dim=1).tolist()
            tokens += sum(lengths)
            flops += training_flops(params, layers, width, lengths)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    from xtune.engine.hooks.throughput import optimizer_kernel

    settings = {
        "attn_implementation": causal_lm.config._attn_implementation,
        # what ran, not what was asked: checkpointing acts only in training mode
        "gradient_checkpointing": bool(checkpointing_active(causal_lm)),
        "loss_chunk_size": 0,  # transformers' full logits, every labelled position
        "optimizer": f"AdamW ({optimizer_kernel(optimizer)})",
        "clip_grad": {"max_norm": 1.0},
    }
    return {
        "settings": settings,
        "iters": case["steps"],
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_sec": tokens / seconds,
        "tflops": flops / seconds / 1e12,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "matmul_parameters": params,
        "losses": losses,
    }


def run_case(case: dict) -> dict:
    """One case in this process."""
    if case.get("threads"):
        import torch

        torch.set_num_threads(case["threads"])
    work = Path(case["work"])
    work.mkdir(parents=True, exist_ok=True)
    result = run_xtune(case, work) if case["impl"] == "xtune" else run_hf(case)
    gc.collect()
    return result


def run_logged(command: list[str], log: Path, title: str, env: dict | None = None) -> tuple[int, list[str]]:
    """Run ``command`` with its output appended to ``log`` under a ``title`` line; its status and lines."""
    with open(log, "a") as handle:
        handle.write(f"\n===== {title}\n")
        handle.flush()
        start = handle.tell()
        status = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env).returncode
    with open(log) as handle:
        handle.seek(start)
        return status, handle.read().splitlines()


def run_in_child(case: dict, log: Path) -> dict:
    """One case in a child process; an error (an out-of-memory, say) becomes the result's ``error``."""
    result_file = Path(case["work"]) / "result.json"
    result_file.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, __file__, "--case", json.dumps(case), "--result", str(result_file)]
    title = f"{case['impl']} {case['mode']} {case['seq']} {case.get('variant', '')}"
    env = {**os.environ, "OMP_NUM_THREADS": str(case["threads"])} if case.get("threads") else None
    status, lines = run_logged(command, log, title, env)
    if status != 0 or not result_file.exists():
        errors = [line for line in lines if "error" in line.lower() and "Build settings" not in line]
        return {"error": f"exit status {status}: " + " | ".join(errors[-2:] or lines[-3:])}
    return json.loads(result_file.read_text())


# ----------------------------------------------------------------------------------------- report
def _name(row: dict) -> str:
    return row["impl"] + row.get("variant", "")


def _baseline(rows: list[dict], row: dict, impl: str) -> dict | None:
    """The ``impl`` case of the same mode, length and round as ``row``."""
    return next((r for r in rows if r["impl"] == impl and not r.get("variant") and "error" not in r
                 and all(r[k] == row[k] for k in ("mode", "seq", "round"))), None)  # fmt: skip


def round_ratio(rows: list[dict], row: dict, impl: str) -> float | None:
    """``row``'s tokens/s over its round's ``impl`` baseline (same mode and length), or None."""
    base = _baseline(rows, row, impl)
    if base is None or "error" in row:
        return None
    return row["tokens_per_sec"] / base["tokens_per_sec"]


def _load(row: dict) -> str:
    return f"{row['load_before']:.1f}-{row['load_after']:.1f}" if "load_before" in row else "-"


def table(rows: list[dict]) -> str:
    """Every case of every round as a fixed-width text table, in the order they ran, with each case's
    ratio to both baselines of its own round and the machine's 1-minute load average before and after."""
    head = f"{'mode':<6} {'seq':>6} {'#':>2} {'impl':<18} {'tokens/s':>10} {'vs padded':>9} {'vs full':>8}"
    head += f" {'TFLOP/s':>8} {'MFU':>6} {'peak GiB':>9} {'load':>9}"
    lines = [head, "-" * len(head)]
    for row in rows:
        start = f"{row['mode']:<6} {row['seq']:>6} {row['round']:>2} {_name(row):<18}"
        if "error" in row:
            lines.append(f"{start} error: {row['error'][:200]}")
            continue
        ratios = [round_ratio(rows, row, impl) for impl in ("hf_padded", "hf_full_rows")]
        ratios = [f"{r:.2f}x" if r is not None else "-" for r in ratios]
        mfu = f"{row['mfu']:.1%}" if row.get("mfu") is not None else "-"
        memory = f"{row['peak_memory_gib']:.1f}" if row.get("peak_memory_gib") is not None else "-"
        lines.append(
            f"{start} {row['tokens_per_sec']:>10,.0f} {ratios[0]:>9} {ratios[1]:>8} {row['tflops']:>8.1f} "
            f"{mfu:>6} {memory:>9} {_load(row):>9}"
        )
    return "\n".join(lines)


def summarize(rows: list[dict]) -> list[dict]:
    """Per case (mode, length, impl + variant): the median tokens/s over its rounds and the median of its
    within-round ratios to each baseline. A ratio taken inside one round compares cases that ran minutes
    apart under about the same load; the median over rounds drops a round that a busy spell distorted."""
    cases: dict[tuple, list[dict]] = {}
    for row in rows:
        cases.setdefault((row["mode"], row["seq"], _name(row)), []).append(row)
    summary = []
    for (mode, seq, name), runs in cases.items():
        good = [r for r in runs if "error" not in r]
        entry = {"mode": mode, "seq": seq, "case": name, "rounds": len(runs), "errors": len(runs) - len(good)}
        if good:
            entry["tokens_per_sec"] = statistics.median(r["tokens_per_sec"] for r in good)
            entry["settings"] = good[0].get("settings")
        for impl, key in (("hf_padded", "vs_padded"), ("hf_full_rows", "vs_full_rows")):
            ratios = [r for r in (round_ratio(rows, row, impl) for row in good) if r is not None]
            entry[key] = statistics.median(ratios) if ratios else None
            entry[key + "_range"] = [min(ratios), max(ratios)] if ratios else None
        summary.append(entry)
    return summary


def summary_table(summary: list[dict]) -> str:
    """The medians as a fixed-width text table (ratio ranges over the rounds in brackets)."""

    def ratio(entry: dict, key: str) -> str:
        if entry[key] is None:
            return "-"
        low, high = entry[key + "_range"]
        return f"{entry[key]:.2f}x [{low:.2f}-{high:.2f}]"

    head = f"{'mode':<6} {'seq':>6} {'case':<18} {'rounds':>6} {'median tok/s':>12} {'vs padded':>19} {'vs full':>19}"
    lines = [head, "-" * len(head)]
    for e in summary:
        speed = f"{e['tokens_per_sec']:,.0f}" if "tokens_per_sec" in e else "error"
        lines.append(f"{e['mode']:<6} {e['seq']:>6} {e['case']:<18} {e['rounds']:>6} {speed:>12} "
                     f"{ratio(e, 'vs_padded'):>19} {ratio(e, 'vs_full_rows'):>19}")  # fmt: skip
    return "\n".join(lines)


def settings_lines(summary: list[dict]) -> str:
    """What each case had switched on (attention, checkpointing, loss, optimizer), one line a case."""
    lines = []
    for e in summary:
        settings = e.get("settings") or {}
        lines.append(f"{e['case']:<18} " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    return "\n".join(lines)


def rotated(cases: list, round_: int) -> list:
    """The cases of round ``round_`` (from 1): each round starts one case later, so no case always runs
    first (a cold page cache) or last (after the others warmed the machine up)."""
    shift = (round_ - 1) % max(len(cases), 1)
    return cases[shift:] + cases[:shift]


def variants_of(args: argparse.Namespace, impls: list[str]) -> list[tuple[str, dict]]:
    """The cases of one mode and length: xtune, the baselines, then xtune's variants (in this order, so a
    run stopped at a time limit has the main comparison first)."""
    variants = [("xtune", {})] if "xtune" in impls else []
    variants += [(impl, {}) for impl in impls if impl != "xtune"]
    if args.compare_loss and "xtune" in impls:
        # every speed switch off: full logits, sdpa, no extra options
        variants.append(("xtune", {"loss_chunk_size": 0, "attn": "sdpa", "xtune_options": {}, "variant": "-plain"}))
    if args.switches and "xtune" in impls:
        chosen = None if args.switches == "all" else set(args.switches.split(","))
        variants += [("xtune", {**settings, "variant": name}) for name, settings, devices in SWITCHES
                     if args.device in devices and (chosen is None or name in chosen)]  # fmt: skip
    return variants


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="1.5b")
    parser.add_argument("--modes", default="lora", help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--impls", default=",".join(IMPLS), help=f"comma-separated, of {', '.join(IMPLS)}")
    parser.add_argument("--seq-lens", help="comma-separated sequence lengths (default 2048; cpu shape 512)")
    parser.add_argument("--data", choices=["alpaca", "long"], default="alpaca",
                        help="alpaca-like samples, or one document of about --seq-lens tokens a row")  # fmt: skip
    parser.add_argument("--batch", type=int, help="samples per padded baseline batch (default 4; cpu shape 8)")
    parser.add_argument("--tokens-per-step", type=int, help="packed / full rows = this / seq (default 8192; cpu 4096)")
    parser.add_argument("--steps", type=int, help="timed optimizer steps (default 20; cpu shape 6)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default 3; cpu shape 2)")
    parser.add_argument("--no-checkpointing", action="store_true", help="turn gradient checkpointing off")
    parser.add_argument("--compare-loss", action="store_true",
                        help="also run xtune with every speed switch off and record both loss curves")  # fmt: skip
    parser.add_argument("--switches", nargs="?", const="all",
                        help="also run xtune with each speed switch flipped, one at a time (SWITCHES); or only "
                             "the named ones, e.g. --switches=-ckpt_auto,-unfused")  # fmt: skip
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds: each runs every case once, starting one case later than the last")  # fmt: skip
    parser.add_argument("--threads", type=int,
                        help="torch CPU threads (and OMP_NUM_THREADS) of every case; default torch's own")  # fmt: skip
    parser.add_argument("--attn", default="auto", help="xtune's attn_implementation (auto, sdpa, flex_attention, ...)")
    parser.add_argument("--xtune-options", nargs="*", default=[], metavar="KEY=VALUE",
                        help="more --cfg-options for the xtune cases, e.g. loss_chunk_size=2048")  # fmt: skip
    parser.add_argument("--device", choices=["cuda", "cpu"], help="default cuda; cpu for the cpu and tiny shapes")
    parser.add_argument("--cache", default="/tmp/xtune_bench", help="models, data and work dirs")
    parser.add_argument("--out", default=None, help="JSON file for the results")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:
        Path(args.result).write_text(json.dumps(run_case(json.loads(args.case))))
        return 0
    for key, value in {**GENERAL_DEFAULTS, **SHAPE_DEFAULTS.get(args.shape, {})}.items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    from xtune.config.loader import parse_cfg_options

    xtune_options = parse_cfg_options(args.xtune_options)
    modes, impls = args.modes.split(","), args.impls.split(",")
    bad = [m for m in modes if m not in MODES] + [i for i in impls if i not in IMPLS]
    switches = {name: devices for name, _, devices in SWITCHES}
    bad += [n for n in (args.switches or "all").split(",") if n != "all" and args.device not in switches.get(n, ())]
    if bad:
        here = [name for name, devices in switches.items() if args.device in devices]
        parser.error(
            f"unknown modes/impls/switches {bad}: modes are {MODES}, impls {IMPLS}, switches on {args.device} {here}"
        )
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    model = make_model(args.shape, cache, args.device)
    if args.data == "alpaca":
        data = make_rows(cache / "alpaca_like.json", count=4000)
    else:  # one document a row, slightly shorter than the shortest sequence length (BOS/EOS fit)
        shortest = min(int(s) for s in args.seq_lens.split(","))
        data = make_documents(cache / f"documents_{shortest}.json", args.warmup + args.steps + 2, shortest - 8)
    peak = measure_peak_tflops(args.device)
    log = cache / "bench.log"
    cases = []
    for seq in [int(s) for s in args.seq_lens.split(",")]:
        for mode in modes:
            for impl, extra in variants_of(args, impls):
                cases.append({
                    "impl": impl, "mode": mode, "seq": seq, "model": str(model), "data": str(data),
                    "device": args.device, "dtype": "bf16" if args.device == "cuda" else "fp32",
                    "data_format": "alpaca" if args.data == "alpaca" else "text",
                    "rows_per_step": max(1, args.tokens_per_step // seq), "batch": args.batch,
                    "steps": args.steps, "warmup": args.warmup, "checkpointing": not args.no_checkpointing,
                    "attn": args.attn, "xtune_options": xtune_options, "threads": args.threads,
                    "work": str(cache / "work" / f"{mode}_{seq}_{impl}{extra.get('variant', '')}"), **extra,
                })  # fmt: skip
    rows = []
    for round_ in range(1, args.repeat + 1):  # round-robin: every case once a round, a busy spell hits all alike
        for case in rotated(cases, round_):
            shutil.rmtree(case["work"], ignore_errors=True)
            load_before = os.getloadavg()[0]
            result = run_in_child(case, log)
            if peak and "tflops" in result:
                result["mfu"] = result["tflops"] / peak
            rows.append({"shape": args.shape, "mode": case["mode"], "seq": case["seq"], "impl": case["impl"],
                         "round": round_, "variant": case.get("variant", ""), "load_before": load_before,
                         "load_after": os.getloadavg()[0], **result})  # fmt: skip
            if args.out:  # after every case, so a run stopped at a time limit keeps what it measured
                Path(args.out).write_text(json.dumps({"partial": True, "rows": rows}, indent=2))
            speed = result.get("tokens_per_sec", result.get("error"))
            print(f"[{round_}] {_name(rows[-1])} {case['mode']} {case['seq']}: {speed} (load {_load(rows[-1])})",
                  flush=True)  # fmt: skip
    settings = {key: value for key, value in vars(args).items() if key not in ("case", "result")}
    summary = summarize(rows)
    report = {"shape_config": SHAPES[args.shape], "settings": settings, "peak_tflops": peak, "cpus": os.cpu_count(),
              "summary": summary, "rows": rows}  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"peak bf16 matmul: {peak:.0f} TFLOP/s" if peak else "peak: not measured (no GPU)")
    print(table(rows))
    print(f"\nmedians over {args.repeat} round(s); ratios are taken within each round, then the median")
    print(summary_table(summary))
    print("\nwhat each case ran with:\n" + settings_lines(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
