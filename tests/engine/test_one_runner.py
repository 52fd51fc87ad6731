"""Every kind of ``xtune train`` run builds the one runner class; only its strategy and checkpoint backend
differ. The three runners are built as ``xtune train`` builds them (``prepare_config`` and the RUNNERS
registry) in a subprocess that holds a 1-rank gloo group, which DDP and DeepSpeed need to be set up."""

import json
import socket
import subprocess
import sys
import textwrap

LORA = "tiny_llama_lora_identity_e3"

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch.distributed as dist
    import xtune.engine
    from xtune.cli import build_parser
    from xtune.cli.train import prepare_config
    from xtune.registry import RUNNERS

    config, model, data, work = sys.argv[1:5]
    dist.init_process_group("gloo")
    options = [f"pretrained_model_name_or_path={model!r}", f"data_path={data!r}", "data_format='alpaca'"]
    kinds = {"plain": ["--launcher", "none"], "ddp": ["--launcher", "pytorch"],
             "deepspeed": ["--launcher", "pytorch", "--deepspeed", "zero2"]}
    found = {}
    for kind, extra in kinds.items():
        args = build_parser().parse_args(
            ["train", config, "--work-dir", f"{work}/{kind}", *extra, "--cfg-options", *options])
        cfg = prepare_config(args)
        cfg.model_wrapper_cfg = {"broadcast_buffers": True}  # overrides one of ddp_settings under DDP
        runner = RUNNERS.build(cfg)
        found[kind] = {"runner": type(runner).__qualname__, "module": type(runner).__module__,
                       "strategy": type(runner.strategy).__name__,
                       "backend": type(runner.checkpoint_backend).__name__}
        if kind == "ddp":
            wrapped = runner.strategy._wrap_model(runner.model)
            frozen = {n for n, p in runner.model.named_parameters() if not p.requires_grad}
            found[kind]["ddp"] = {
                "device_ids": wrapped.device_ids,
                "find_unused_parameters": wrapped.find_unused_parameters,
                "gradient_as_bucket_view": wrapped.gradient_as_bucket_view,
                "broadcast_buffers": wrapped.broadcast_buffers,
                "frozen_ignored": bool(frozen) and set(wrapped.parameters_to_ignore) == frozen,
            }
    print("RESULT " + json.dumps(found))
    """
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_plain_ddp_and_deepspeed_runs_build_the_same_runner_class(tiny_llama, alpaca_file, tmp_path):
    env = {
        **{k: v for k, v in __import__("os").environ.items() if k not in ("NPROC_PER_NODE", "NNODES")},
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "OMP_NUM_THREADS": "1",
    }
    command = [sys.executable, "-c", SCRIPT, LORA, str(tiny_llama), str(alpaca_file), str(tmp_path)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    found = json.loads(result.stdout.split("RESULT ", 1)[1])

    from xtune.engine.runner import XtuneRunner

    assert {(v["module"], v["runner"]) for v in found.values()} == {(XtuneRunner.__module__, "XtuneRunner")}
    assert {kind: v["strategy"] for kind, v in found.items()} == {
        "plain": "XtuneSingleDeviceStrategy",
        "ddp": "XtuneDDPStrategy",
        "deepspeed": "XtuneDeepSpeedStrategy",
    }
    assert {kind: v["backend"] for kind, v in found.items()} == {
        "plain": "FileBackend",
        "ddp": "FileBackend",
        "deepspeed": "DeepSpeedBackend",
    }
    # DDP as ddp_settings says, with model_wrapper_cfg overriding one setting (broadcast_buffers)
    assert found["ddp"]["ddp"] == {
        "device_ids": None,
        "find_unused_parameters": False,
        "gradient_as_bucket_view": True,
        "broadcast_buffers": True,
        "frozen_ignored": True,
    }


def test_the_deprecated_name_is_the_same_class():
    from xtune.engine.flexible_runner import XtuneFlexibleRunner
    from xtune.engine.runner import XtuneRunner
    from xtune.registry import RUNNERS

    assert XtuneFlexibleRunner is XtuneRunner
    assert RUNNERS.get("XtuneFlexibleRunner") is XtuneRunner and RUNNERS.get("XtuneRunner") is XtuneRunner
