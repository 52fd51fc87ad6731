"""Peak memory and time of the loss with and without chunks: what ``loss_chunk_size`` earns.

The full-logits loss holds a ``tokens x vocabulary`` fp32 tensor and its gradient; the chunked loss
(:func:`xtune.model.loss.chunked_token_loss_sum`) holds one chunk at a time and skips untrained rows. This
measures one forward + backward of the output layer and cross-entropy alone, each setting in a child
process of its own (peak RSS on a CPU, ``max_memory_allocated`` on CUDA), on hidden states where half the
tokens are trained (prompts are not).

    python benchmarks/loss_memory.py                                   # CPU: 4096 tokens, vocabulary 128256
    python benchmarks/loss_memory.py --device cuda --tokens 16384 --hidden 4096 --dtype bf16
"""

import argparse
import json
import resource
import subprocess
import sys
import time


def measure(
    device: str,
    tokens: int,
    hidden: int,
    vocab: int,
    dtype: str,
    chunk: int,
    trained: float = 0.5,
    host_count: bool = False,
) -> dict:
    """One forward + backward of the loss over ``tokens`` hidden states; peak memory above the inputs.

    ``trained``: the share of tokens trained (the rest is prompt); ``host_count``: pass the trained count
    as the training loop does (``trained_tokens``), so the chunked loss reads nothing back from the device.
    """
    import torch

    from xtune.dataset.collate import count_trained_tokens
    from xtune.model.loss import chunked_token_loss_sum, shifted_token_loss_sum

    torch.manual_seed(0)
    kind = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    states = torch.randn(1, tokens, hidden, device=device, dtype=kind, requires_grad=True)
    weight = (torch.randn(vocab, hidden, device=device, dtype=kind) * hidden**-0.5).requires_grad_()
    labels = torch.randint(0, vocab, (1, tokens), device=device)
    labels[:, : tokens - round(tokens * trained)] = -100  # the prompt is not trained
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_mib()
    start = time.perf_counter()
    if chunk:
        known = count_trained_tokens(labels) if host_count else None  # as the training loop counts
        loss_sum, count = chunked_token_loss_sum(states, weight, labels, chunk_size=chunk, trained_tokens=known)
    else:
        loss_sum, count = shifted_token_loss_sum(states @ weight.T, labels)
    (loss_sum / count).backward()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = _peak_rss_mib() - base
    return {"chunk": chunk, "seconds": time.perf_counter() - start, "peak_mib": peak, "loss": float(loss_sum / count)}


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=128256, help="Llama 3's vocabulary by default")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--chunks", default="0,1024", help="comma-separated loss_chunk_size values (0: full logits)")
    parser.add_argument("--trained", type=float, default=0.5, help="share of the tokens trained (the rest: prompt)")
    parser.add_argument(
        "--host-count", action="store_true", help="give the chunked loss the trained count, as training does"
    )
    parser.add_argument("--out", help="JSON file for the results")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    shape = (args.device, args.tokens, args.hidden, args.vocab, args.dtype)
    if args.one is not None:
        print(json.dumps(measure(*shape, args.one, args.trained, args.host_count)))
        return 0
    rows = []
    for chunk in [int(c) for c in args.chunks.split(",")]:
        child = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--one", str(chunk)]
        done = subprocess.run(child, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    logits_mib = args.tokens * args.vocab * 4 / 2**20
    print(f"{args.tokens} tokens ({args.trained:.0%} trained), hidden {args.hidden}, vocabulary {args.vocab}, "
          f"{args.dtype} on {args.device}{', trained count from the host' if args.host_count else ''}; "
          f"fp32 logits alone: {logits_mib:,.0f} MiB")  # fmt: skip
    print(f"{'loss_chunk_size':>15} {'peak MiB':>10} {'seconds':>8} {'loss':>9}")
    for row in rows:
        print(f"{row['chunk']:>15} {row['peak_mib']:>10,.0f} {row['seconds']:>8.2f} {row['loss']:>9.4f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(
                {"shape": shape, "trained": args.trained, "host_count": args.host_count, "rows": rows}, f, indent=2
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
