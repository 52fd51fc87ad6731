"""Every speed switch trains what the plain path trains, checked on the device at hand.

A speed switch may change how fast a step runs, never its numbers (issue 15). The unit tests check that on
the CPU in fp32 (tests/model/test_attention.py, test_loss.py, test_finetune.py); the kernels that differ
most run elsewhere: ``xtune_varlen`` calls torch's ``varlen_attn`` on CUDA in bf16, FlexAttention has no
CPU backward, fused AdamW and ``torch.compile`` generate device code. This script runs the same check on
whatever device it is given, in each dtype, so a GPU session proves parity there in one call.

For each switch, a tiny Llama-architecture model (:func:`xtune.testing.make_tiny_model`, full finetuning)
takes the same batch, two rows packed with samples of different lengths, prompt tokens untrained and a
padding tail, once with the switch on and once with the plain setting; the loss and every gradient are
compared (``fused_adamw``: the change of every weight over three AdamW steps).

How close is close:

- fp32: the switch agrees with the plain path to rounding: loss within a relative 1e-5, the gradients (all
  of them as one vector) within a relative 1e-4 of the plain ones (L2 norms).
- bf16 (and fp16): both paths are judged against the plain path in fp32, the numbers the low-precision run
  approximates. The switch's error may be at most twice the plain low-precision path's own error (plus a
  floor of 1e-3): it is no less exact than what users already train with. A switch that breaks the numbers
  (samples attending to each other, a lost chunk of the loss) is off by orders of magnitude more.

Examples::

    python benchmarks/switch_parity.py --device cuda --dtypes bf16,fp32 --out parity.json   # on a GPU
    python benchmarks/switch_parity.py --device cpu --switches varlen,chunked_loss         # any machine
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

# Each switch: (its fast setting, the plain setting, the devices it runs on). Every other knob stays at
# the plain setting: full logits, sdpa, no checkpointing, no compile, for-loop AdamW.
PLAIN = {"attn_implementation": "sdpa", "loss_chunk_size": 0, "gradient_checkpointing": False}
SWITCHES = {
    "varlen": ({"attn_implementation": "xtune_varlen"}, {}, ("cpu", "cuda")),
    "flex_attention": ({"attn_implementation": "flex_attention"}, {}, ("cuda",)),  # no CPU backward
    "chunked_loss": ({"loss_chunk_size": 16}, {}, ("cpu", "cuda")),  # 16: several chunks a row
    "checkpointing": ({"gradient_checkpointing": True}, {}, ("cpu", "cuda")),
    "compiled": ({"compile_layers": True}, {}, ("cpu", "cuda")),
    "fused_adamw": ({"fused": True}, {"foreach": False}, ("cpu", "cuda")),  # optimizer options
}
OPTIMIZER_SWITCHES = {"fused_adamw"}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# (samples of one packed row); each sample's first 5 tokens are its prompt (not trained)
ROWS = ([23, 30, 11], [41, 9])
ADAM_STEPS = 3


def make_batch(device: str) -> dict:
    """Two packed rows (the collator pads the second and states every segment), on ``device``."""
    from xtune.dataset.collate import count_trained_tokens, sft_collate_fn

    generator = torch.Generator().manual_seed(0)
    items = []
    for lengths in ROWS:
        ids = torch.randint(3, 900, (sum(lengths),), generator=generator).tolist()
        positions = [p for n in lengths for p in range(n)]
        labels = [-100 if p < 5 else t for p, t in zip(positions, ids)]
        items.append({"input_ids": ids, "labels": labels, "position_ids": positions})
    batch = sft_collate_fn(items)
    batch["units"] = count_trained_tokens(batch["labels"])  # counted on the host, as the training loop does
    return {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}


def build(model_path: Path, device: str, dtype: str, settings: dict):
    """The model as ``xtune train`` builds it (full finetuning), with ``settings`` over the plain ones."""
    from xtune.model import SupervisedFinetune

    model = SupervisedFinetune(str(model_path), finetune_type="full", dtype=dtype, **{**PLAIN, **settings}).to(device)
    model.train()
    return model


def gradients(model, batch: dict) -> tuple[float, torch.Tensor]:
    """The loss of one forward/backward and every gradient as one fp32 vector (in parameter order)."""
    model.zero_grad(set_to_none=True)
    loss = model(**batch)["loss"]
    loss.backward()
    grads = [p.grad.float().reshape(-1) for p in model.parameters() if p.requires_grad]
    return float(loss.detach()), torch.cat(grads)


def adam_updates(model, batch: dict, options: dict) -> tuple[float, torch.Tensor]:
    """The first loss and the change of every weight over ``ADAM_STEPS`` AdamW steps on ``batch``."""
    params = [p for p in model.parameters() if p.requires_grad]
    before = torch.cat([p.detach().float().reshape(-1) for p in params])
    optimizer = torch.optim.AdamW(params, lr=1e-3, **options)
    first = None
    for _ in range(ADAM_STEPS):
        optimizer.zero_grad(set_to_none=True)
        loss = model(**batch)["loss"]
        loss.backward()
        optimizer.step()
        first = float(loss.detach()) if first is None else first
    after = torch.cat([p.detach().float().reshape(-1) for p in params])
    return first, after - before


def run(model_path: Path, name: str, side: dict, device: str, dtype: str) -> tuple[float, torch.Tensor]:
    """One side of one switch: loss and gradient vector (or weight changes for an optimizer switch)."""
    torch.manual_seed(0)
    model = build(model_path, device, dtype, side if name not in OPTIMIZER_SWITCHES else {})
    batch = make_batch(device)
    if name in OPTIMIZER_SWITCHES:
        result = adam_updates(model, batch, side)
    else:
        result = gradients(model, batch)
    del model
    return result[0], result[1].cpu()


def relative(a: float | torch.Tensor, b: float | torch.Tensor) -> float:
    """|a - b| / |b| (L2 norms for vectors)."""
    if isinstance(a, torch.Tensor):
        return float((a - b).norm() / b.norm().clamp_min(1e-30))
    return abs(a - b) / max(abs(b), 1e-30)


def judge(dtype: str, fast: tuple, plain: tuple, exact: tuple | None) -> dict:
    """Whether a switch keeps the numbers: ``fast`` and ``plain`` are (loss, vector) in ``dtype``; ``exact``
    is the plain path in fp32 (None when ``dtype`` is fp32)."""
    if dtype == "fp32":
        loss_error, vector_error = relative(fast[0], plain[0]), relative(fast[1], plain[1])
        ok = loss_error <= 1e-5 and vector_error <= 1e-4
        return {"loss_error": loss_error, "vector_error": vector_error, "ok": ok}
    loss_error, vector_error = relative(fast[0], exact[0]), relative(fast[1], exact[1])
    plain_loss_error, plain_vector_error = relative(plain[0], exact[0]), relative(plain[1], exact[1])
    ok = loss_error <= 2 * plain_loss_error + 1e-3 and vector_error <= 2 * plain_vector_error + 1e-3
    return {
        "loss_error": loss_error, "vector_error": vector_error, "plain_loss_error": plain_loss_error,
        "plain_vector_error": plain_vector_error, "ok": ok,
    }  # fmt: skip


def check(model_path: Path, device: str, dtypes: list[str], names: list[str]) -> list[dict]:
    """Every switch in ``names`` that runs on ``device``, in every dtype; one row each (skipped ones say why)."""
    rows = []
    for dtype in dtypes:
        exact = {}  # the plain path in fp32, per kind of comparison (gradients, AdamW updates)
        for name in names:
            on, off, devices = SWITCHES[name]
            row = {"switch": name, "dtype": dtype, "device": device}
            if device not in devices:
                rows.append({**row, "ran": False, "why": f"runs on {', '.join(devices)} only"})
                continue
            fast = run(model_path, name, on, device, dtype)
            plain = run(model_path, name, off, device, dtype)
            reference = None
            if dtype != "fp32":
                kind = "adam" if name in OPTIMIZER_SWITCHES else "grads"
                if kind not in exact:
                    exact[kind] = run(model_path, name, off, device, "fp32")
                reference = exact[kind]
            rows.append({**row, "ran": True, "loss": fast[0], "plain_loss": plain[0],
                         **judge(dtype, fast, plain, reference)})  # fmt: skip
    return rows


def table(rows: list[dict]) -> str:
    lines = [f"{'switch':<15} {'dtype':<5} {'loss err':>10} {'grad err':>10} {'plain err':>10}  verdict"]
    for row in rows:
        if not row["ran"]:
            lines.append(f"{row['switch']:<15} {row['dtype']:<5} {'':>10} {'':>10} {'':>10}  not run: {row['why']}")
            continue
        plain = f"{row['plain_vector_error']:.1e}" if "plain_vector_error" in row else "-"
        verdict = "same numbers" if row["ok"] else "DIFFERENT"
        lines.append(f"{row['switch']:<15} {row['dtype']:<5} {row['loss_error']:>10.1e} {row['vector_error']:>10.1e} "
                     f"{plain:>10}  {verdict}")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtypes", default="fp32", help=f"comma-separated, of {', '.join(DTYPES)}")
    parser.add_argument("--switches", default=",".join(SWITCHES), help=f"comma-separated, of {', '.join(SWITCHES)}")
    parser.add_argument("--out", help="JSON file for the results")
    args = parser.parse_args(argv)
    dtypes, names = args.dtypes.split(","), args.switches.split(",")
    bad = [d for d in dtypes if d not in DTYPES] + [n for n in names if n not in SWITCHES]
    if bad:
        parser.error(f"unknown dtypes/switches {bad}: dtypes are {list(DTYPES)}, switches {list(SWITCHES)}")
    from xtune.testing import make_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        rows = check(make_tiny_model("llama", Path(tmp) / "llama"), args.device, dtypes, names)
    if args.out:
        report = {"device": args.device, "torch": torch.__version__, "rows": rows}
        Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"device {args.device}, torch {torch.__version__}")
    print(table(rows))
    return 0 if all(row["ok"] for row in rows if row["ran"]) else 1


if __name__ == "__main__":
    sys.exit(main())
