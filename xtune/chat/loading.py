"""Load what ``xtune chat`` talks to: a model folder (plus an adapter), or a training checkpoint."""

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xtune.errors import ConfigError, XtuneError
from xtune.hf.dtypes import resolve_device, resolve_dtype


@dataclass
class ChatModel:
    """A model ready to generate, its tokenizer (chat template installed) and the template's name.

    Attributes:
        model: A transformers causal LM or vision-language model (or PEFT model), in eval mode.
        tokenizer: Its tokenizer; ``chat_template`` is what prompts are rendered with.
        template: The built-in template name, or ``auto`` for the tokenizer's own template.
        processor: A vision-language model's :class:`~xtune.hf.vision.VisionProcessor` (its ``tokenizer``
            is :attr:`tokenizer`); None for a text model.
    """

    model: Any
    tokenizer: Any
    template: str
    processor: Any = None

    @property
    def reads_images(self) -> bool:
        return self.processor is not None


def _install_template(tokenizer, template: str, source: str) -> None:
    from xtune.dataset.templates import TEMPLATES, set_chat_template

    if template == "auto" and not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            f"{source} has no chat template of its own (a base model?). Pass --template NAME with one of the "
            f"built-in templates: {', '.join(TEMPLATES)}."
        )
    set_chat_template(tokenizer, template)


def load_model_for_chat(
    model_path: str,
    adapter: str | None = None,
    template: str = "auto",
    bits: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
) -> ChatModel:
    """Load a Hugging Face model folder (or hub name), optionally with a PEFT adapter on top.

    The tokenizer comes from the adapter folder when it has one (``xtune convert pth_to_hf`` saves the
    training tokenizer and template there), else from the model. A vision-language model (its config has
    a ``vision_config``: LLaVA, Qwen2.5-VL, a converted LLaVA run) is loaded with its image processor.

    Raises:
        XtuneError: The model cannot be loaded, ``--bits`` cannot be honoured, or the adapter does not fit.
    """
    from xtune.convert.adapter import attach_adapter, read_adapter_config
    from xtune.convert.hf_files import has_tokenizer
    from xtune.hf.load import load_model, load_tokenizer
    from xtune.hf.quantization import bnb_config
    from xtune.hf.vision import is_vision_language, load_processor, load_vision_model, quantization_skips

    if adapter:
        read_adapter_config(adapter)  # fail on a bad adapter before loading the model
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device=device, training=False, knob="--dtype")
    quantization = None
    if bits:
        fix = "Leave --bits out on this machine."
        quantization = bnb_config(bits, dtype, asked_by=f"--bits {bits}", fix=fix)
    fix = (
        "Pass a Hugging Face model folder, e.g. the SAVE_DIR of `xtune convert merge` (or a base model with --adapter)."
    )
    loading = {"trust_remote_code": trust_remote_code, "fix": fix, "error": XtuneError}
    tokenizer_source = adapter if adapter and has_tokenizer(adapter) else model_path
    processor = None
    if is_vision_language(model_path, trust_remote_code):
        processor = load_processor(model_path, **loading)
        if quantization is not None:  # vision tower, projector and output layer stay unquantized, as in training
            quantization_skips(quantization, processor.family)
        model = load_vision_model(model_path, dtype=dtype, device=device, quantization=quantization, what="", **loading)
        if tokenizer_source != model_path:  # the training tokenizer and template, saved beside the adapter
            processor.tokenizer = load_tokenizer(tokenizer_source, **loading)
        tokenizer = processor.tokenizer
    else:
        model = load_model(model_path, dtype=dtype, device=device, quantization=quantization, what="", **loading)
        tokenizer = load_tokenizer(tokenizer_source, **loading)
    if adapter:
        model = attach_adapter(model, adapter, base_name=f"the model {model_path}")
    _install_template(tokenizer, template, f"the tokenizer of {tokenizer_source}")
    return ChatModel(model.eval(), tokenizer, template, processor)


def load_checkpoint_for_chat(
    config: str | Path,
    checkpoint: str | Path,
    cfg_options: dict[str, Any] | None = None,
    device: str = "auto",
    dtype: str = "auto",
) -> ChatModel:
    """Build the trained model straight from its training config and a checkpoint.

    The tokenizer gets the config's ``prompt_template``, so prompts are rendered as in training. A
    ``qlora`` run is served on an unquantized base (its adapter weights are the same).

    Raises:
        ConfigError, CheckpointError: See :func:`xtune.convert.checkpoint.build_trained_model`.
    """
    from xtune.config import load_config
    from xtune.convert.checkpoint import (
        build_trained_model,
        model_settings,
        read_checkpoint,
        tokenizer_settings,
    )
    from xtune.convert.vision import is_vision_run, trained_processor
    from xtune.dataset.tokenizer import load_tokenizer_with_template

    cfg = load_config(config, cfg_options)
    trained = read_checkpoint(checkpoint)
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device=device, training=False, knob="--dtype")
    if model_settings(cfg).get("finetune_type") == "qlora":
        print("xtune: serving the qlora adapter on an unquantized base model", file=sys.stderr)
    model = build_trained_model(cfg, trained.state, dtype=dtype, source=f"checkpoint {checkpoint}")
    settings = model_settings(cfg)
    tokenizer_path, template = tokenizer_settings(cfg)
    if is_vision_run(settings):  # images in, as the run's data fed them
        processor = trained_processor(settings, tokenizer_path, template)
        return ChatModel(model.llm.to(device).eval(), processor.tokenizer, template, processor)
    tokenizer = load_tokenizer_with_template(tokenizer_path, template, bool(settings.get("trust_remote_code")))
    return ChatModel(model.llm.to(device).eval(), tokenizer, template)
