"""Benchmark: tokenise, mask and pack N alpaca-style rows with the tiny tokenizer.

    python tools/bench_data.py --rows 50000 --num-proc 2

Prints rows/s (from reading the file to packed rows, tokenizer load included; Python's one-time import of
transformers' model modules excluded) and peak RSS (this process and its workers). RSS counts the pages of
memory-mapped files (the processed-data cache is read back that way), which the kernel can drop at will, so
the anonymous memory (heap: what a process really holds) is also sampled every 20 ms, summed over this
process and its workers. Not a test: numbers go in notes.
"""

import argparse
import json
import random
import resource
import tempfile
import threading
import time
from pathlib import Path

WORDS = (
    "the model learns from data and answers questions about science history cooking travel code "
    "numbers music sport weather language health money time"
).split()


def make_rows(count: int, seed: int = 0) -> list[dict]:
    """Alpaca rows whose lengths follow a long-tailed distribution like Alpaca's (median ~40 words)."""
    rng = random.Random(seed)

    def text(mean: float) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(max(1, int(rng.lognormvariate(mean, 0.7)))))

    return [
        {"instruction": text(2.5), "input": text(2.0) if rng.random() < 0.4 else "", "output": text(3.6)}
        for _ in range(count)
    ]


def _anon_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) / 1024
    except OSError:  # ended meanwhile, or no /proc
        pass
    return 0.0


class AnonPeak:
    """The largest sum of anonymous memory of this process and its descendants seen while running."""

    def __init__(self) -> None:
        self.peak = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        import os

        from xtune.cli.workers import process_tree

        while not self._done.wait(0.02):
            self.peak = max(self.peak, sum(_anon_mb(pid) for pid in process_tree(os.getpid())))

    def __enter__(self) -> "AnonPeak":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=2048)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from xtune.dataset import SFTDataset
    from xtune.paths import MODEL_DIR

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rows.jsonl"
        with open(path, "w") as handle:  # streamed: the benchmark itself holds no rows in memory
            for row in make_rows(args.rows):
                handle.write(json.dumps(row) + "\n")
        # Import transformers' model modules once (about 2.5 s, paid by any process that loads a
        # tokenizer or model) so that the timing measures the data pipeline, tokenizer load included.
        AutoTokenizer.from_pretrained(MODEL_DIR / "tiny_llama")
        anon = AnonPeak().__enter__()
        start = time.perf_counter()
        # the default path: processed rows go to an on-disk cache and are memory-mapped back
        dataset = SFTDataset(
            str(path),
            str(MODEL_DIR / "tiny_llama"),
            data_format="alpaca",
            max_length=args.max_length,
            pack_to_max_length=True,
            num_proc=args.num_proc,
            cache_dir=str(Path(tmp) / "cache"),
        )
        elapsed = time.perf_counter() - start
        anon.__exit__()
        stats = dataset.statistics()
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "rows": args.rows,
                "seconds": round(elapsed, 2),
                "rows_per_s": round(args.rows / elapsed),
                "peak_rss_mb": round(own),
                "peak_worker_rss_mb": round(workers),
                "peak_anon_mb_all": round(anon.peak),
                "packed_rows": stats["packed_rows"],
                "packing_efficiency": stats["packing_efficiency"],
                "tokens": stats["tokens"],
            }
        )
    )


if __name__ == "__main__":
    main()
