"""A dataset build parses its data file at most once: the vision cache key and processing share one parse,
the format guess and the check before processing (xtune.dataset.precheck) read only the first row, and with
several ranks only rank 0 parses."""

import json
import os
import random
import socket
import tempfile
import time
from pathlib import Path

import pytest

from xtune.dataset import SFTDataset, VisionSFTDataset, loading
from xtune.errors import DataError
from xtune.paths import MODEL_DIR
from xtune.testing.tiny_vision import make_tiny_clip

LM = str(MODEL_DIR / "tiny_llama")
IMAGES = Path(__file__).resolve().parents[2] / "data" / "vision_demo" / "images"


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> str:
    return str(make_tiny_clip(tmp_path_factory.mktemp("parse_once") / "clip"))


def llava_rows(count: int) -> list[dict]:
    rng = random.Random(0)
    names = sorted(p.name for p in IMAGES.glob("*.png"))
    return [
        {
            "image": rng.choice(names),
            "conversations": [
                {"from": "human", "value": f"<image>\nWhat is shape {i}?"},
                {"from": "gpt", "value": f"Shape {i} is a {rng.choice(names)[:-4].replace('_', ' ')}."},
            ],
        }
        for i in range(count)
    ]


def spy_parses(monkeypatch) -> list[dict]:
    """Record each read of a JSON data file: how many rows it parsed and whether it read to the end."""
    reads: list[dict] = []
    original = loading.iter_json_rows

    def spy(file, first):
        read = {"file": str(file), "rows": 0, "whole": False}
        reads.append(read)
        for item in original(file, first):
            read["rows"] += 1
            yield item
        read["whole"] = True

    monkeypatch.setattr(loading, "iter_json_rows", spy)
    return reads


def whole(reads: list[dict]) -> int:
    return sum(read["whole"] for read in reads)


def build(data: str, clip: str, cache_dir: Path | None, **kwargs) -> VisionSFTDataset:
    return VisionSFTDataset(
        data,
        LM,
        vision_tower=clip,
        image_folder=str(IMAGES),
        prompt_template="llava",
        max_length=128,
        cache=cache_dir is not None,
        cache_dir=str(cache_dir) if cache_dir else None,
        **kwargs,
    )


def test_vision_build_parses_the_file_once_on_a_miss_and_once_on_a_hit(tmp_path, clip, monkeypatch):
    data = tmp_path / "llava.json"
    data.write_text(json.dumps(llava_rows(40)))
    cache = tmp_path / "cache"
    reads = spy_parses(monkeypatch)
    miss = build(str(data), clip, cache)
    # The format guess and the check read one row each; the key and the processing share one whole parse.
    assert whole(reads) == 1 and [read["rows"] for read in reads] == [1, 1, 40]
    assert miss.spec.data_format == "sharegpt" and miss.statistics()["images"] == 40
    reads.clear()
    hit = build(str(data), clip, cache)
    assert whole(reads) == 1 and len(reads) == 3  # the key still reads every row's image paths
    assert hit.cache_key() == miss.cache_key() and hit.statistics() == miss.statistics()
    # The parsed rows were written under the cache folder and removed after the build: only the entry is left.
    assert sorted(path.name for path in cache.iterdir()) == [miss.cache_key()]


def test_uncached_and_mixture_builds_parse_each_file_once(tmp_path, clip, monkeypatch):
    first, second = tmp_path / "a.json", tmp_path / "b.jsonl"
    first.write_text(json.dumps(llava_rows(12)))
    second.write_text("\n".join(json.dumps(row) for row in llava_rows(7)))
    reads = spy_parses(monkeypatch)
    before = set(os.listdir(tempfile.gettempdir()))
    dataset = build(f"{first},{second}", clip, None, data_format="sharegpt")
    assert [(read["file"], read["rows"], read["whole"]) for read in reads] == [
        (str(first), 1, False),  # every file's first row is checked before any file is processed
        (str(second), 1, False),
        (str(first), 12, True),
        (str(second), 7, True),
    ]
    assert dataset.statistics()["images"] == 19
    assert not {name for name in os.listdir(tempfile.gettempdir()) if name.startswith("raw-rows-")} - before


def test_text_sft_parses_only_on_a_miss(tmp_path, alpaca_file, monkeypatch):
    cache = tmp_path / "cache"
    reads = spy_parses(monkeypatch)
    miss = SFTDataset(str(alpaca_file), LM, data_format="alpaca", cache_dir=str(cache))
    assert [(read["rows"], read["whole"]) for read in reads] == [(1, False), (16, True)]
    reads.clear()
    hit = SFTDataset(str(alpaca_file), LM, data_format="alpaca", cache_dir=str(cache))
    assert [(read["rows"], read["whole"]) for read in reads] == [(1, False)]  # the first row's check only
    assert hit.statistics() == miss.statistics()


# ----------------------------------------------------------------------------- ranks


def _rank(rank: int, port: int, files: list[str], clip: str, out: str) -> None:
    """One of two gloo ranks building a dataset from each file with a shared cache; writes what each build
    parsed and gave (or its error)."""
    import torch

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    reads: list[int] = []
    original = loading.iter_json_rows

    def spy(file, first):
        reads.append(0)
        for item in original(file, first):
            reads[-1] += 1
            yield item

    loading.iter_json_rows = spy
    results = []
    try:
        for data in files:
            reads.clear()
            try:
                dataset = build(data, clip, Path(out) / "cache")
                results.append({"key": dataset.cache_key(), "samples": len(dataset), "reads": list(reads)})
            except DataError as exc:
                results.append({"error": str(exc), "reads": list(reads)})
    finally:
        torch.distributed.destroy_process_group()
    Path(out, f"rank{rank}.json").write_text(json.dumps(results))


def run_ranks(files: list[Path], clip: str, out: Path) -> list[list[dict]]:
    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = mp.spawn(_rank, args=(port, [str(f) for f in files], clip, str(out)), nprocs=2, join=False)
    deadline = time.monotonic() + 180
    while not context.join(timeout=2):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the ranks did not finish building the dataset: one waits for the other")
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1)]


def test_with_two_ranks_only_rank_0_parses_and_errors_reach_both(tmp_path, clip):
    data, broken = tmp_path / "llava.json", tmp_path / "broken.json"
    data.write_text(json.dumps(llava_rows(30)))
    broken.write_text(data.read_text()[:-1] + ', {"image": }]')
    other, missing_image = tmp_path / "other.json", tmp_path / "missing_image.json"
    other.write_text(json.dumps(llava_rows(20)))
    missing_image.write_text(json.dumps([{**llava_rows(1)[0], "image": "missing.png"}]))
    mixture = f"{other},{missing_image}"
    (first, first_broken, first_mixed), (second, second_broken, second_mixed) = run_ranks(
        [data, broken, mixture], clip, tmp_path
    )
    # Both guess the format from the first row; rank 0 checks the first row again before processing, and
    # only rank 0 parses the whole file (for the key and processing).
    assert first["reads"] == [1, 1, 30] and second["reads"] == [1]
    assert first["key"] == second["key"] and first["samples"] == second["samples"] == 30
    # A file broken after its first row: rank 0 finds it computing the key, and rank 1 gets the same error.
    assert "invalid JSON" in first_broken["error"] and first_broken["error"] == second_broken["error"]
    assert second_broken["reads"] == [1]
    # A mixture whose second file's first row is bad: rank 0's check finds it before anything is parsed
    # whole or processed, and rank 1 gets the same error.
    assert str(missing_image) in first_mixed["error"] and "missing.png" in first_mixed["error"]
    assert first_mixed["error"] == second_mixed["error"]
    assert first_mixed["reads"] == [1, 1, 1, 1] and second_mixed["reads"] == [1, 1]  # first rows only
    assert sorted(path.name for path in (tmp_path / "cache").iterdir()) == [first["key"]]  # nothing cached
