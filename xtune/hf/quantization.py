"""bitsandbytes quantisation: 4-bit for ``qlora`` training and ``--bits 4``, 8-bit for ``--bits 8``.

The arguments are built apart from the config (:func:`bnb_arguments`) so they can be checked on a
machine without bitsandbytes; :func:`bnb_config` adds the checks that need the GPU and the library.
"""

from __future__ import annotations

from typing import Any

from xtune.errors import XtuneError
from xtune.hf.dtypes import torch_dtype

# QLoRA's published recipe: NormalFloat4 with the quantisation constants quantised again.
FOUR_BIT_DEFAULTS: dict[str, Any] = {"bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True}


def bnb_arguments(bits: int, dtype: str, settings: dict | None = None) -> dict[str, Any]:
    """The ``BitsAndBytesConfig`` arguments for ``bits`` (4 or 8).

    Args:
        bits: 4 (NF4 with double quantisation unless ``settings`` say otherwise) or 8 (LLM.int8).
        dtype: The resolved compute dtype of 4-bit layers (``bf16``, ``fp16``, ``fp32``).
        settings: The config's ``model.quantization`` (``bnb_4bit_quant_type``,
            ``bnb_4bit_use_double_quant``, ``bnb_4bit_quant_storage``); 4 bits only.
    """
    if bits == 8:
        return {"load_in_8bit": True}
    if bits != 4:
        raise ValueError(f"bitsandbytes quantises to 4 or 8 bits, not {bits}")
    # The compute dtype is the model's: a config cannot set it apart from model.dtype.
    return {"load_in_4bit": True, **FOUR_BIT_DEFAULTS, **(settings or {}), "bnb_4bit_compute_dtype": torch_dtype(dtype)}


def bnb_config(bits: int, dtype: str, settings: dict | None = None, *, asked_by: str, fix: str):
    """A ``transformers.BitsAndBytesConfig`` (see :func:`bnb_arguments`), once the machine can use it.

    Args:
        asked_by: What asked for quantisation, as errors name it (``qlora``, ``--bits 4``).
        fix: What to do instead on a machine without a CUDA GPU.

    Raises:
        XtuneError: No CUDA GPU, or bitsandbytes is not installed.
    """
    import torch

    if not torch.cuda.is_available():
        raise XtuneError(f"{asked_by} needs a CUDA GPU: bitsandbytes quantizes the weights on the GPU. {fix}")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise XtuneError(f"{asked_by} needs bitsandbytes: pip install bitsandbytes") from None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(**bnb_arguments(bits, dtype, settings))
