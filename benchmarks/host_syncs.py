"""Where a training step reads tensors back to the host: each such read waits for the GPU to finish.

On a GPU, ``.item()``, ``float(t)``, ``bool(t)``, ``.tolist()``, ``.cpu()`` and ``nonzero()`` of a device
tensor stop the host until the device has caught up, so the host cannot queue the next kernels ahead.
This runs a few steps of ``xtune train`` on a config (on whatever device the machine has) under a
``TorchFunctionMode`` that counts those calls by the innermost xtune or mmengine source line that made
them, and prints them per training step. On a CPU the count shows the same code paths, except those that
only a device takes (e.g. the CPU's per-segment attention reads ``cu_seq_lens`` on the host, the CUDA
kernel does not).

    python benchmarks/host_syncs.py tiny_llama_lora_identity_e3 --steps 8
"""

import argparse
import collections
import sys
import tempfile
import traceback

import torch
from torch.overrides import TorchFunctionMode

READS = {"item", "tolist", "cpu", "nonzero", "__bool__", "__float__", "__int__", "__index__"}
OURS = ("/xtune/", "/mmengine/")


class CountReads(TorchFunctionMode):
    """Counts the calls that read a tensor back to the host, by the xtune/mmengine line that made them."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in READS:
            frames = [f for f in traceback.extract_stack()[:-1] if any(part in f.filename for part in OURS)]
            where = f"{frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno} {frames[-1].line}" if frames else "?"
            self.counts[(name, where)] += 1
        return func(*args, **(kwargs or {}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="a shipped config name or a config file")
    parser.add_argument("--steps", type=int, default=8, help="training steps (one rank)")
    args = parser.parse_args(argv)
    from xtune.testing.training import train

    options = {"max_epochs": 1, "train_cfg.max_epochs": None, "train_cfg.max_iters": args.steps, "param_scheduler": [],
               "evaluation_inputs": [], "save_steps": 10**6, "default_hooks.checkpoint.save_last": False}  # fmt: skip
    counter = CountReads()
    with tempfile.TemporaryDirectory() as work, counter:
        if train(args.config, work, options) != 0:
            print("host_syncs: training failed; see its log above", file=sys.stderr)
            return 1
    per_step = [(count / args.steps, name, where) for (name, where), count in counter.counts.items()]
    print(f"reads back to the host per training step ({args.steps} steps, device: "
          f"{'cuda' if torch.cuda.is_available() else 'cpu'}); below 1: once per run or per save")  # fmt: skip
    for rate, name, where in sorted(per_step, reverse=True):
        print(f"{rate:>7.2f}  {name:<10} {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
