"""The longest sequence that trains one step on one device, for each long-context switch on and off.

For each shape and variant, a random-init Llama-architecture model of that shape (written once to
``--cache``) is built the way ``xtune train`` builds it (:class:`xtune.model.FinetuneModel`), and one
training step (forward, backward, AdamW step) runs on one packed row of ``L`` tokens. ``L`` doubles from
``--start`` until a step runs out of memory (or reaches ``--max-len``), then a binary search narrows the
longest length that trains to ``--resolution`` tokens. At that length two more steps are timed: tokens/s
and peak memory are reported.

Variants (each a column of the report):

- ``ckpt``: gradient checkpointing, chunked loss (``loss_chunk_size=1024``): xtune's long-row defaults.
- ``ckpt+offload``: and ``activation_offload=True`` (each checkpointed layer's input in CPU memory).
- ``ckpt+offload+tiled_mlp``: and ``tiled_mlp`` (each MLP over tiles of ``hidden_size`` tokens).
- ``ckpt-full_logits``: the chunked loss off (``loss_chunk_size=0``), to show what it saves.
- ``no_ckpt``: no checkpointing at all.

Shapes: ``8b`` (Llama-3-8B's shape, QLoRA by default), ``1.5b`` (the speed harness's 1.5B shape, LoRA), ``tiny`` (a
CPU smoke run of every path; on a CPU nothing runs out of memory, so the search stops at ``--max-len``).

Examples::

    # on one GPU: both shapes, every variant (about 10 minutes on an H200)
    python benchmarks/long_context.py --shape 8b --shape 1.5b --out long_context.json
    # the CPU smoke run (a test runs it)
    python benchmarks/long_context.py --shape tiny --start 64 --max-len 256 --resolution 64
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_speed  # noqa: E402  (one table of model shapes for every benchmark)

# the speed harness's shapes, so "the 1.5B shape" and "the 8B shape" are the same models in both
SHAPES = {name: train_speed.SHAPES[name] for name in ("tiny", "1.5b", "8b")}
MODES = {"tiny": "lora", "1.5b": "lora", "8b": "qlora"}
VARIANTS = {
    "ckpt": {"gradient_checkpointing": True},
    "ckpt+offload": {"gradient_checkpointing": True, "activation_offload": True},
    # tiles of hidden_size tokens, as DeepSpeed's ALST does
    "ckpt+offload+tiled_mlp": {"gradient_checkpointing": True, "activation_offload": True, "tiled_mlp": "hidden"},
    "ckpt-full_logits": {"gradient_checkpointing": True, "loss_chunk_size": 0},
    "no_ckpt": {"gradient_checkpointing": False},
}
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": "all-linear"}


def make_model(shape: str, cache: Path, device: str) -> Path:
    """A random-init Llama checkpoint of ``shape`` (bf16 on a GPU, fp32 on a CPU) with the tiny tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from xtune.testing import tiny_tokenizer_dir

    path = cache / f"long_llama_{shape}"
    if (path / "config.json").exists():
        return path
    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=262144, rope_theta=500000.0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_tokenizer_dir()).save_pretrained(path)
    del model
    return path


def _row(length: int, vocab: int, device: str) -> dict:
    """One packed row of ``length`` tokens: two samples, the first 10% of each untrained (a prompt)."""
    import torch

    ids = torch.randint(3, vocab, (1, length), device=device)
    half = length // 2
    positions = torch.cat([torch.arange(half), torch.arange(length - half)]).unsqueeze(0).to(device)
    labels = ids.clone()
    labels[:, : half // 10] = -100
    labels[:, half : half + (length - half) // 10] = -100
    cu = torch.tensor([0, half, length], dtype=torch.int32, device=device)
    return {"input_ids": ids, "labels": labels, "position_ids": positions, "cu_seq_lens": cu}


def _step(model, optimizer, length: int, device: str) -> None:
    batch = _row(length, model.causal_lm().config.vocab_size, device)
    loss = model(**batch, mode="loss")["loss"]
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _fits(model, optimizer, length: int, device: str) -> bool:
    import torch

    try:
        _step(model, optimizer, length, device)
        return True
    except torch.OutOfMemoryError:
        return False
    finally:
        optimizer.zero_grad(set_to_none=True)
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()


def longest(model, optimizer, device: str, start: int, max_len: int, resolution: int) -> tuple[int, int | None]:
    """``(longest length that trained, shortest that did not or None)``: doubling, then bisection."""
    good, bad = 0, None
    length = start
    while length <= max_len:
        if not _fits(model, optimizer, length, device):
            bad = length
            break
        good, length = length, length * 2
    if bad is None and good < max_len:  # the doubling stepped over the cap: try the cap itself
        if _fits(model, optimizer, max_len, device):
            good = max_len
        else:
            bad = max_len
    while bad is not None and bad - good > resolution:
        middle = (good + bad) // 2 // resolution * resolution or resolution
        if middle <= good:
            break
        if _fits(model, optimizer, middle, device):
            good = middle
        else:
            bad = middle
    return good, bad


def measure(shape: str, variant: str, path: Path, args: argparse.Namespace) -> dict:
    import torch

    from xtune.model import FinetuneModel

    mode = args.mode or MODES[shape]
    row = {"shape": shape, "mode": mode, "variant": variant, **VARIANTS[variant]}
    settings = {"loss_chunk_size": 1024, "activation_offload": False, **VARIANTS[variant]}
    if settings.get("tiled_mlp") == "hidden":
        settings["tiled_mlp"] = SHAPES[shape]["hidden_size"]
    model = FinetuneModel(
        str(path), finetune_type=mode, dtype="bf16" if args.device == "cuda" else "fp32", lora=LORA, **settings
    )
    if args.device == "cuda" and mode != "qlora":
        model.cuda()
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5, fused=args.device == "cuda")
    good, bad = longest(model, optimizer, args.device, args.start, args.max_len, args.resolution)
    row.update(longest=good, first_failure=bad)
    if good:
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            torch.cuda.synchronize()
        begin = time.perf_counter()
        for _ in range(args.timed_steps):
            _step(model, optimizer, good, args.device)
        if args.device == "cuda":
            torch.cuda.synchronize()
            row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        row["tokens_per_sec"] = round(args.timed_steps * good / (time.perf_counter() - begin), 1)
    del model, optimizer, trainable
    gc.collect()
    if args.device == "cuda":
        torch.cuda.empty_cache()
    return row


def table(rows: list[dict]) -> str:
    lines = ["| shape | mode | variant | longest (tokens) | first OOM | tokens/s there | peak GiB |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(
            f"| {r['shape']} | {r['mode']} | {r['variant']} | {r.get('longest', '-'):,} "
            f"| {r.get('first_failure') or '-'} | {r.get('tokens_per_sec', '-')} | {r.get('peak_gib', '-')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", action="append", choices=sorted(SHAPES), help="repeatable (default 8b and 1.5b)")
    parser.add_argument("--mode", choices=["lora", "qlora", "full"], help="default: qlora for 8b, lora otherwise")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--start", type=int, default=8192, help="first length tried (tokens)")
    parser.add_argument("--max-len", type=int, default=262144, help="longest length tried")
    parser.add_argument("--resolution", type=int, default=2048, help="the bisection stops this close")
    parser.add_argument("--timed-steps", type=int, default=2)
    parser.add_argument("--device", choices=["cuda", "cpu"], help="default: cuda for 8b/1.5b, cpu for tiny")
    parser.add_argument("--cache", help="where the random-init models are written (default: a temporary folder)")
    parser.add_argument("--out", help="write the rows as JSON here")
    args = parser.parse_args(argv)
    shapes = args.shape or ["8b", "1.5b"]
    args.device = args.device or ("cpu" if shapes == ["tiny"] else "cuda")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    sys.path.insert(0, str(REPO))
    temporary = None
    if args.cache is None:
        temporary = tempfile.TemporaryDirectory(prefix="xtune_long_")
        args.cache = temporary.name
    rows = []
    for shape in shapes:
        path = make_model(shape, Path(args.cache), args.device)
        for variant in variants:
            row = measure(shape, variant, path, args)
            print(json.dumps(row), flush=True)
            rows.append(row)
    print(table(rows))
    if args.out:
        Path(args.out).write_text(json.dumps({"shapes": {s: SHAPES[s] for s in shapes}, "rows": rows}, indent=2))
    if temporary is not None:
        temporary.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
