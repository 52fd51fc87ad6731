"""Benchmark: the cache key of a text dataset, which hashes the whole data file on every start (docs/benchmarks.md).

    python benchmarks/text_cache_key.py --mib 200 --file /tmp/alpaca_200mb.jsonl

Writes a JSON Lines file of alpaca rows of about ``--mib`` MiB (unless ``--file`` exists already), then times,
``--runs`` times: SHA-256 of the file as :func:`xtune.dataset.process.cache_key` reads it (1 MiB blocks),
the whole ``cache_key`` (file, tokenizer, settings) with the tiny LM's tokenizer, and a plain read of the file
(what the disk and page cache alone cost). Not a test: numbers go in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import time
from pathlib import Path

WORDS = "the of and to in is you that it was for on are as with they at be this from have or by one had not".split()


def write_rows(file: Path, mib: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    size = 0
    with open(file, "w", encoding="utf-8") as out:
        while size < mib * 2**20:
            row = {
                "instruction": " ".join(rng.choices(WORDS, k=40)),
                "input": "",
                "output": " ".join(rng.choices(WORDS, k=120)),
            }
            line = json.dumps(row) + "\n"
            out.write(line)
            size += len(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=200, help="size of the generated file")
    parser.add_argument("--file", type=Path, default=Path("/tmp/xtune_text_cache_key.jsonl"))
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    from xtune.dataset.dataset_info import resolve_dataset
    from xtune.dataset.encode import EncodeOptions
    from xtune.dataset.process import _hash_path, cache_key
    from xtune.dataset.tokenizer import load_tokenizer_with_template
    from xtune.paths import MODEL_DIR

    if not args.file.exists():
        write_rows(args.file, args.mib)
    size = args.file.stat().st_size / 2**20
    spec = resolve_dataset(str(args.file), "alpaca")
    tokenizer = load_tokenizer_with_template(str(MODEL_DIR / "tiny_llama"), "auto", False)
    options = EncodeOptions(2048, "truncate", False, False)
    for run in range(args.runs):
        start = time.perf_counter()
        _hash_path(hashlib.sha256(), args.file)
        digest = time.perf_counter() - start
        start = time.perf_counter()
        cache_key(spec, tokenizer, options, {}, False)
        key = time.perf_counter() - start
        start = time.perf_counter()
        with open(args.file, "rb") as handle:
            while handle.read(1 << 20):
                pass
        read = time.perf_counter() - start
        print(f"run {run}: {size:.0f} MiB  sha256 {digest:.2f} s  cache_key {key:.2f} s  plain read {read:.2f} s")


if __name__ == "__main__":
    main()
