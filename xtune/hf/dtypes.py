"""Dtype names and devices: what ``auto`` means, in one table.

=================  ============  ============
``auto`` on        to train      to run
=================  ============  ============
CPU                fp32          fp32
GPU with bf16      bf16          bf16
GPU without bf16   fp32          fp16
=================  ============  ============

Training keeps fp32 weights on a GPU without bf16 because fp16 weights cannot be trained with loss
scaling (the gradient scaler refuses fp16 gradients); mixed precision comes from the optimizer wrapper.
torch is imported inside functions: the CLI's argument parsers and the config checks use the names alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from xtune.errors import ConfigError, XtuneError

if TYPE_CHECKING:
    import torch

DTYPE_NAMES: tuple[str, ...] = ("auto", "bf16", "fp16", "fp32")
"""Every value a ``dtype`` knob or ``--dtype`` option takes."""

LONG_NAMES: dict[str, str] = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
"""xtune's dtype names -> torch's (and DeepSpeed's, vLLM's) spelling."""


def check_dtype(dtype: str, knob: str = "dtype") -> str:
    """``dtype`` itself when it is one of :data:`DTYPE_NAMES`.

    Raises:
        ConfigError: Any other value, naming ``knob`` and the allowed values.
    """
    if dtype not in DTYPE_NAMES:
        raise ConfigError(f"{knob} must be one of {', '.join(DTYPE_NAMES)}; got '{dtype}'.")
    return dtype


def resolve_device(device: str = "auto") -> str:
    """``auto`` becomes ``cuda`` when a GPU is present, else ``cpu``.

    Raises:
        XtuneError: A CUDA device is asked for on a machine without one.
    """
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise XtuneError(f"--device {device}: this machine has no CUDA GPU. Use --device cpu.")
    return device


def resolve_dtype(dtype: str, device: str | None = None, training: bool = True, knob: str = "dtype") -> str:
    """``bf16``, ``fp16`` or ``fp32`` for a ``dtype`` knob's value (see the table above for ``auto``).

    Args:
        dtype: One of :data:`DTYPE_NAMES`.
        device: Where the model will be (``cpu``, ``cuda``, ``cuda:1``); None: a GPU when there is one.
        training: Whether the weights will be trained (``auto`` never picks fp16 then).
        knob: How an error names the setting (``model.dtype``, ``--dtype``).

    Raises:
        ConfigError: An unknown dtype name.
    """
    import torch

    check_dtype(dtype, knob)
    if dtype != "auto":
        return dtype
    on_gpu = torch.cuda.is_available() if device is None else str(device).startswith("cuda")
    if not on_gpu:
        return "fp32"
    if torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32" if training else "fp16"


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a resolved name (``bf16`` -> ``torch.bfloat16``)."""
    import torch

    return getattr(torch, LONG_NAMES[name])


def dtype_name(dtype: torch.dtype | str | None) -> str | None:
    """xtune's name of a torch dtype (or its spelling in a model config, ``"bfloat16"``), or None when
    it is not one of bf16/fp16/fp32."""
    text = str(dtype).removeprefix("torch.")
    return next((name for name, long in LONG_NAMES.items() if long == text), None)
