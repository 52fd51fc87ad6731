"""Load a Hugging Face model or tokenizer; every loader in xtune goes through here.

Failures become one xtune error naming the path and what went wrong (a missing folder, a weight file
holding pickled code, the library's first line), followed by the caller's ``fix``: training says which
config knob to set, chat and convert which argument to pass.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from xtune.errors import ConfigError, XtuneError, model_load_problem
from xtune.hf.dtypes import dtype_name, torch_dtype

MODEL_CLASSES = {
    "causal_lm": AutoModelForCausalLM,
    # A reward model: one scalar per sequence, read at its last non-pad token.
    "sequence_classification": AutoModelForSequenceClassification,
}
"""The model kinds a stage can ask for (``Objective.model_kind``) and the transformers class of each."""

TRAINING_FIX = "Set pretrained_model_name_or_path to a Hugging Face model directory or hub name."


def load_model(
    path: str | Path,
    *,
    kind: str = "causal_lm",
    dtype: str = "fp32",
    device: str | int | None = None,
    quantization: Any = None,
    trust_remote_code: bool = False,
    attn_implementation: str = "auto",
    what: str = "the model",
    fix: str = TRAINING_FIX,
    error: type[XtuneError] = ConfigError,
):
    """Load the model in ``path`` (a folder or hub name).

    Args:
        path: The model folder or hub name.
        kind: A key of :data:`MODEL_CLASSES`. ``sequence_classification`` gets one label, and the
            tokenizer's pad id (after :func:`load_tokenizer`'s rule) when the config has none: the
            classifier finds each row's last token by it.
        dtype: A resolved dtype name (``bf16``, ``fp16``, ``fp32``; see :mod:`xtune.hf.dtypes`).
        device: None or ``cpu``: loaded on the CPU (the trainer moves it); otherwise a device (``cuda``,
            ``cuda:1`` or a GPU index) that every weight is loaded straight onto.
        quantization: A ``BitsAndBytesConfig`` (:func:`xtune.hf.quantization.bnb_config`), or None.
        trust_remote_code: Run the model repository's own code.
        attn_implementation: ``auto`` lets transformers pick (sdpa where the model supports it, else
            eager); any other value is passed on.
        what: How the error names the model (``the model``, ``the base model``; empty: the path alone).
        fix: The sentence that ends the error: what to pass instead.
        error: The error class raised (:class:`~xtune.errors.ConfigError` for configs).

    Raises:
        XtuneError: ``error``, when the model cannot be loaded.
    """
    if kind not in MODEL_CLASSES:
        raise ValueError(f"model kind must be one of {', '.join(MODEL_CLASSES)}, got {kind!r}")
    kwargs = loading_kwargs(dtype, device, quantization, trust_remote_code)
    if attn_implementation != "auto":
        kwargs["attn_implementation"] = attn_implementation
    if kind == "sequence_classification":
        kwargs["num_labels"] = 1  # a scalar reward
    try:
        model = MODEL_CLASSES[kind].from_pretrained(str(path), **kwargs)
    except (OSError, ValueError, pickle.UnpicklingError) as exc:
        named = f"{what} " if what else ""
        raise error(f"cannot load {named}{model_load_problem(str(path), exc)}. {fix}") from None
    if kind == "sequence_classification" and model.config.pad_token_id is None:
        tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code, fix=fix, error=error)
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def loading_kwargs(dtype: str, device: str | int | None, quantization: Any, trust_remote_code: bool) -> dict:
    """``from_pretrained`` keyword arguments for a dtype, a device (None/``cpu``: loaded on the CPU) and an
    optional quantisation config; shared by causal LMs and vision-language models."""
    kwargs: dict[str, Any] = {"dtype": torch_dtype(dtype), "trust_remote_code": trust_remote_code}
    if quantization is not None:
        kwargs["quantization_config"] = quantization
    if device is not None and device != "cpu":
        kwargs["device_map"] = {"": device}
    return kwargs


def recorded_dtype(path: str | Path) -> str:
    """The dtype a model's config records (``bf16``, ``fp16``, ``fp32``), fp32 when it records none.

    Raises:
        XtuneError: The config cannot be read.
    """
    try:
        config = AutoConfig.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise XtuneError(f"cannot read the base model config in {path}: {str(exc).splitlines()[0]}") from None
    stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    return dtype_name(stored) or "fp32"


def load_tokenizer(
    path: str | Path,
    *,
    trust_remote_code: bool = False,
    pad: bool = True,
    fix: str = TRAINING_FIX,
    error: type[XtuneError] = ConfigError,
):
    """Load the tokenizer in ``path``; with ``pad``, one without a pad token pads with its EOS token.

    Batches are padded with ``tokenizer.pad_token_id`` and a reward model reads the same id from its
    config, so both come from here. ``pad=False`` keeps the tokenizer as saved (``convert merge``
    copies it unchanged).

    Raises:
        XtuneError: ``error``, when no tokenizer can be loaded from ``path``.
    """
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        where = "directory" if Path(path).exists() else "model name (no such local directory)"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise error(f"cannot load a tokenizer from {where} '{path}': {first}. {fix}") from None
    if pad and tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
