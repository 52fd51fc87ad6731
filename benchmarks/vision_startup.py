"""Benchmark: start-up of a VisionSFTDataset on a generated LLaVA-style JSON (docs/benchmarks.md).

    python benchmarks/vision_startup.py --rows 20000

Writes N LLaVA-style rows (``image`` + ShareGPT ``conversations``) that point at the shipped demo images
(data/vision_demo/images), then builds the dataset LLaVA-style (the tiny LM plus a tiny random CLIP's image
processor, no ``data_format``: guessed from the first row) twice in a fresh cache folder: a cache miss
(parse, check images, tokenise, save) and a cache hit (the key only). Prints each build's seconds and how
many times the data file was parsed (full reads of the JSON), and what one parse costs. Not a test: numbers
go in docs/benchmarks.md. To measure another checkout's code, put it first on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "data" / "vision_demo" / "images"
WORDS = "the shape in this picture is a circle square triangle red green blue yellow and it sits on white".split()


def make_rows(count: int, seed: int = 0) -> list[dict]:
    """LLaVA-665k-like rows: one image each, a question with <image> and a short answer."""
    rng = random.Random(seed)
    images = sorted(p.name for p in IMAGES.glob("*.png"))

    def text(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n))

    return [
        {
            "id": str(i),
            "image": rng.choice(images),
            "conversations": [
                {"from": "human", "value": "<image>\n" + text(rng.randint(5, 20)) + "?"},
                {"from": "gpt", "value": text(rng.randint(5, 40)) + "."},
            ],
        }
        for i in range(count)
    ]


def count_parses():
    """Count full reads of a JSON data file (each call of the row parser's iterator that runs to the end)."""
    from xtune.dataset import json_rows, loading

    counter = {"parses": 0}
    original = json_rows.iter_json_rows

    def counting(file, first):
        rows = 0
        for item in original(file, first):
            rows += 1
            yield item
        if rows > 1:  # a first-row read stops after one
            counter["parses"] += 1

    loading.iter_json_rows = counting
    return counter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--num-proc", type=int, default=1)
    args = parser.parse_args()
    if importlib.util.find_spec("xtune") is None:
        sys.path.insert(0, str(ROOT))
    from xtune.dataset import VisionSFTDataset
    from xtune.paths import MODEL_DIR
    from xtune.testing.tiny_vision import make_tiny_clip

    counter = count_parses()
    with tempfile.TemporaryDirectory(prefix="xtune-vision-bench-") as tmp:
        work = Path(tmp)
        data = work / "llava.json"
        data.write_text(json.dumps(make_rows(args.rows)))
        clip = str(make_tiny_clip(work / "clip"))
        size_mb = os.path.getsize(data) / 1e6
        print(f"{args.rows} rows, {size_mb:.1f} MB JSON, load average {os.getloadavg()[0]:.2f}")
        from xtune.dataset.dataset_info import resolve_dataset
        from xtune.dataset.loading import load_rows

        parse = []
        for _ in range(3):
            start = time.perf_counter()
            load_rows(resolve_dataset(str(data), "sharegpt"))
            parse.append(time.perf_counter() - start)
        print(f"one parse of the file (load_rows, best of 3): {min(parse):.2f} s")
        for label in ("cache miss", "cache hit"):
            counter["parses"] = 0
            start = time.perf_counter()
            dataset = VisionSFTDataset(
                str(data),
                str(MODEL_DIR / "tiny_llama"),
                vision_tower=clip,
                image_folder=str(IMAGES),
                prompt_template="llava",
                max_length=512,
                num_proc=args.num_proc,
                cache_dir=str(work / "cache"),
            )
            seconds = time.perf_counter() - start
            print(f"{label}: {seconds:.1f} s, {counter['parses']} full parse(s) of the file, {len(dataset)} samples")
        print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
