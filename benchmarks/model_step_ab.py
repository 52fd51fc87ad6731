"""One forward + backward of the CPU shape, several ways, in one process, alternating: robust to load.

``train_speed.py`` runs each case in its own process minutes apart; on a shared machine the load moves
in between. Here every setup is built once and the setups take turns step by step (the order reversed
every other round), so a busy spell slows them alike. It times the model only (no optimizer, loop or
hooks): xtune's :class:`~xtune.model.FinetuneModel` on packed rows against transformers + peft on full
rows, each with gradient checkpointing on and off. Uses the model and data ``train_speed.py --shape cpu``
wrote to its cache::

    OMP_NUM_THREADS=1 python benchmarks/model_step_ab.py --reps 4
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_speed as bench  # noqa: E402

SETUPS = ("xtune_packed", "xtune_packed_no_ckpt", "hf_full_rows", "hf_full_rows_no_ckpt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", default="/tmp/xtune_bench")
    parser.add_argument("--reps", type=int, default=4, help="rounds; the first is left out of the medians")
    parser.add_argument("--setups", default=",".join(SETUPS))
    args = parser.parse_args()
    import torch

    from xtune.dataset import SFTDataset, sft_collate_fn
    from xtune.model.finetune import FinetuneModel

    cache = Path(args.cache)
    model_path = str(bench.make_model("cpu", cache, "cpu"))
    data = str(bench.make_rows(cache / "alpaca_like.json", count=4000))
    case = {"impl": "hf_full_rows", "mode": "lora", "seq": 512, "model": model_path, "data": data, "device": "cpu",
            "dtype": "fp32", "rows_per_step": 8, "steps": 4, "warmup": 2}  # fmt: skip
    dataset = SFTDataset(data, model_path, data_format="alpaca", max_length=512, pack_to_max_length=True)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0)).tolist()
    packed = [sft_collate_fn([dataset[i] for i in order[k * 8 : (k + 1) * 8]]) for k in range(6)]
    full = bench._hf_batches(case)

    def xtune(checkpointing: bool):
        model = FinetuneModel(model_path, "lora", dtype="fp32", lora=bench.LORA, pack_to_max_length=True,
                              gradient_checkpointing=checkpointing)  # fmt: skip
        model.train()
        return model, packed

    def hf(checkpointing: bool):
        return bench._hf_model({**case, "checkpointing": checkpointing}), full

    build = {"xtune_packed": lambda: xtune(True), "xtune_packed_no_ckpt": lambda: xtune(False),
             "hf_full_rows": lambda: hf(True), "hf_full_rows_no_ckpt": lambda: hf(False)}  # fmt: skip
    names = args.setups.split(",")
    built = {name: build[name]() for name in names}
    speeds: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(args.reps):
        for name in names if rep % 2 == 0 else names[::-1]:
            model, batches = built[name]
            batch = batches[rep % len(batches)]
            start = time.perf_counter()
            if name.startswith("xtune"):
                trained = max(int((batch["labels"][:, 1:] != -100).sum()), 1)
                model(**batch, mode="loss", loss_scale=1.0 / trained)["loss"].backward()
                tokens = int(batch["num_tokens"].sum())
            else:
                model(**batch).loss.backward()
                tokens = batch["input_ids"].numel()
            speeds[name].append(tokens / (time.perf_counter() - start))
            model.zero_grad(set_to_none=True)
        print(f"round {rep} load {os.getloadavg()[0]:.1f}: " + ", ".join(f"{n} {v[-1]:.0f}" for n, v in speeds.items()))
    medians = {name: statistics.median(v[1:] or v) for name, v in speeds.items()}
    print("median tokens/s: " + ", ".join(f"{name} {value:.0f}" for name, value in medians.items()))
    # xtune over hf at the same checkpointing, round by round (rounds after the first), then the median
    for xtune_name, hf_name in (("xtune_packed", "hf_full_rows"), ("xtune_packed_no_ckpt", "hf_full_rows_no_ckpt")):
        if xtune_name in speeds and hf_name in speeds:
            ratios = [x / h for x, h in zip(speeds[xtune_name], speeds[hf_name], strict=True)][1:]
            if ratios:
                print(
                    f"{xtune_name} / {hf_name}: median {statistics.median(ratios):.2f}x, rounds "
                    + ", ".join(f"{r:.2f}" for r in ratios)
                )


if __name__ == "__main__":
    main()
