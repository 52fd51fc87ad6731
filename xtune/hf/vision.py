"""Vision-language models: load a transformers VLM, or compose a LLaVA model from a ViT and a causal LM.

Two ways in, one result: a transformers image-text-to-text model and its processor, so what training
writes loads in plain transformers and vLLM.

- A VLM folder (``llava-hf/llava-1.5-7b-hf``, ``Qwen/Qwen2.5-VL-7B-Instruct``, Qwen3-VL):
  :func:`load_vision_model` (``AutoModelForImageTextToText``) and :func:`load_processor` (``AutoProcessor``).
- LLaVA-style (XTuner's ``llava_<llm>_<vision>_...`` configs): :func:`compose_llava` builds a
  ``LlavaForConditionalGeneration`` whose language model and output layer *are* the causal LM's modules,
  whose vision tower *is* the ViT (CLIP or SigLIP vision model), with a new LLaVA-1.5 projector (two
  linear layers with GELU between). Nothing is copied: the LM is loaded once, quantised if asked.
  :func:`load_processor` with ``vision_tower`` gives the matching ``LlavaProcessor``: the LM's tokenizer
  with an ``<image>`` token added, the ViT's image processor.

Family specifics (where the vision tower, the projector and the language model sit, how one image is
written in the text, whether packed rows work) are one table, :data:`VISION_FAMILIES`.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xtune.errors import ConfigError, XtuneError, model_load_problem
from xtune.hf.dtypes import torch_dtype
from xtune.hf.load import TRAINING_FIX, load_model, load_tokenizer, loading_kwargs

IMAGE_PLACEHOLDER = "<image>"
"""How data files mark an image in a message (LLaVA's JSON and LLaMA-Factory's ``mllm`` data)."""


@dataclass(frozen=True)
class VisionFamily:
    """Where one VLM family keeps its parts, and how it writes an image in the text.

    Attributes:
        vision: Module path of the vision tower in the transformers model.
        projectors: Module paths of the layers that map vision features into the LM's hidden states, all
            trained, saved and loaded together as "the projector". They may sit inside the vision tower, as
            Qwen's ``merger`` does; Qwen3-VL adds ``deepstack_merger_list``, one merger per ViT layer whose
            features it adds to the LM's first layers (DeepStack), which are projectors as much as ``merger``
            is (docs/multimodal.md says why they follow ``freeze_projector`` rather than the tower).
        language_model: Module path of the decoder (without the output layer).
        image_text: The text one image becomes, with ``{tokens}`` for its expanded image tokens.
        packs: Whether packed rows are supported: 1-D positions restarting per sample. Qwen's 3-D
            multimodal RoPE positions are computed by the model from whole rows, so those families do not.
    """

    vision: str
    projectors: tuple[str, ...]
    language_model: str
    image_text: str = "{tokens}"
    packs: bool = True


_QWEN_IMAGE = "<|vision_start|>{tokens}<|vision_end|>"
_QWEN_VL = VisionFamily("model.visual", ("model.visual.merger",), "model.language_model", _QWEN_IMAGE, False)
VISION_FAMILIES: dict[str, VisionFamily] = {
    "llava": VisionFamily("model.vision_tower", ("model.multi_modal_projector",), "model.language_model"),
    "qwen2_vl": _QWEN_VL,
    "qwen2_5_vl": _QWEN_VL,
    "qwen3_vl": VisionFamily(
        "model.visual",
        ("model.visual.merger", "model.visual.deepstack_merger_list"),
        "model.language_model",
        _QWEN_IMAGE,
        False,
    ),
}
"""``model_type`` -> :class:`VisionFamily`, for every VLM family xtune trains."""

VISION_FIX = (
    "Set pretrained_model_name_or_path to a vision-language model folder (llava, qwen2_vl, qwen2_5_vl, "
    "qwen3_vl), or compose one LLaVA-style: a causal LM there and model.vision_tower = a CLIP/SigLIP folder."
)


def vision_family(model_type: str) -> VisionFamily:
    """The :class:`VisionFamily` of a ``model_type``.

    Raises:
        ConfigError: xtune does not know where that family keeps its vision tower.
    """
    if model_type not in VISION_FAMILIES:
        raise ConfigError(
            f"xtune does not train '{model_type}' vision-language models (known: {', '.join(VISION_FAMILIES)}). "
            + VISION_FIX
        )
    return VISION_FAMILIES[model_type]


def is_vision_language(path: str | Path, trust_remote_code: bool = False) -> bool:
    """Whether the model in ``path`` is a vision-language model (its config has a ``vision_config``)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return False
    return getattr(config, "vision_config", None) is not None


def submodule(model, path: str):
    """The module at a dotted ``path`` (``model.visual.merger``) of ``model``, or None."""
    module = model
    for name in path.split("."):
        module = getattr(module, name, None)
        if module is None:
            return None
    return module


def load_vision_model(
    path: str | Path,
    *,
    dtype: str = "fp32",
    device: str | int | None = None,
    quantization: Any = None,
    trust_remote_code: bool = False,
    attn_implementation: str = "auto",
    what: str = "the model",
    fix: str = VISION_FIX,
    error: type[XtuneError] = ConfigError,
):
    """Load a transformers vision-language model (``AutoModelForImageTextToText``) from ``path``.

    ``attn_implementation`` applies to the language model; the vision tower keeps transformers' default
    (packed-row implementations read segment boundaries of the text, which mean nothing to a ViT).

    Raises:
        XtuneError: ``error``, when the model cannot be loaded.
    """
    from transformers import AutoConfig, AutoModelForImageTextToText

    kwargs = loading_kwargs(dtype, device, quantization, trust_remote_code)
    try:
        if attn_implementation != "auto":
            config = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
            kwargs["attn_implementation"] = _per_part_attention(config, attn_implementation)
        return AutoModelForImageTextToText.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError, pickle.UnpicklingError) as exc:
        named = f"{what} " if what else ""
        raise error(f"cannot load {named}{model_load_problem(str(path), exc)}. {fix}") from None


def _per_part_attention(config, implementation: str) -> dict[str, str]:
    """``attn_implementation`` for transformers: the language model's choice, sdpa for every other part."""
    parts = {"": implementation}
    for name in getattr(config, "sub_configs", {}) or {}:
        parts[name] = implementation if name == "text_config" else "sdpa"
    return parts


def _vision_config(vision_tower: str | Path, trust_remote_code: bool):
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(vision_tower), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"cannot load the vision tower {model_load_problem(str(vision_tower), exc)}. Set model.vision_tower "
            "to a CLIP or SigLIP model folder or hub name (e.g. openai/clip-vit-large-patch14-336)."
        ) from None
    # A full CLIP/SigLIP checkpoint holds a text tower too: the vision half is what LLaVA uses.
    return getattr(config, "vision_config", config)


def llava_config(llm_config, vision_config, image_token_id: int):
    """The ``LlavaConfig`` of LLaVA-1.5 over these two models.

    LLaVA-1.5 reads the ViT's second-to-last layer; CLIP's class token is dropped (``default``), SigLIP
    has none (``full``).
    """
    from transformers import LlavaConfig

    strategy = "default" if vision_config.model_type.startswith("clip") else "full"
    patches = (vision_config.image_size // vision_config.patch_size) ** 2
    return LlavaConfig(
        vision_config=vision_config.to_dict(),
        text_config=llm_config.to_dict(),
        image_token_id=image_token_id,
        projector_hidden_act="gelu",
        vision_feature_layer=-2,
        vision_feature_select_strategy=strategy,
        image_seq_length=patches,
        tie_word_embeddings=getattr(llm_config, "tie_word_embeddings", False),
    )


def compose_llava(
    llm: str | Path,
    vision_tower: str | Path,
    *,
    dtype: str = "fp32",
    device: str | int | None = None,
    quantization: Any = None,
    trust_remote_code: bool = False,
    attn_implementation: str = "auto",
    projector_seed: int = 0,
):
    """A ``LlavaForConditionalGeneration`` made of the causal LM in ``llm`` and the ViT in ``vision_tower``.

    The LM (quantised when ``quantization`` is given) and the ViT are loaded once and become the LLaVA
    model's modules; the projector is new, initialised from ``projector_seed`` (the same seed gives the
    same projector, so a run and its conversion agree before the trained weights are loaded). The image
    token is the tokenizer's ``<image>`` (:func:`load_processor` adds it); when the LM's embedding has no
    row for it, a row is added holding the mean embedding (the row is never read: image features replace
    it).

    Raises:
        ConfigError: Either model cannot be loaded, or the LM is itself a vision-language model.
    """
    import torch
    from transformers import AutoModel, LlavaForConditionalGeneration
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    vision_config = _vision_config(vision_tower, trust_remote_code)
    lm = load_model(
        llm,
        dtype=dtype,
        device=device,
        quantization=quantization,
        trust_remote_code=trust_remote_code,
        attn_implementation=attn_implementation,
        what="the language model",
    )
    if getattr(lm.config, "vision_config", None) is not None:
        raise ConfigError(f"{llm} is already a vision-language model: train it without model.vision_tower.")
    tokenizer = _llava_tokenizer(llm, trust_remote_code)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    if image_token_id >= lm.get_input_embeddings().weight.shape[0]:
        _add_embedding_rows(lm, len(tokenizer))
    try:
        vit = AutoModel.from_pretrained(
            str(vision_tower), config=vision_config, dtype=torch_dtype(dtype), trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError, pickle.UnpicklingError) as exc:
        raise ConfigError(f"cannot load the vision tower {model_load_problem(str(vision_tower), exc)}.") from None
    config = llava_config(lm.config, vision_config, image_token_id)
    config._attn_implementation = lm.config._attn_implementation
    with torch.device("meta"):
        llava = LlavaForConditionalGeneration(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(projector_seed)
        projector = LlavaMultiModalProjector(config).to(dtype=torch_dtype(dtype), device=lm.device)
    llava.model.vision_tower = vit.to(lm.device)
    llava.model.multi_modal_projector = projector
    llava.model.language_model = lm.get_decoder()
    llava.lm_head = lm.get_output_embeddings()
    llava.config.text_config = lm.config
    llava.generation_config = lm.generation_config
    if getattr(lm, "hf_quantizer", None) is not None:
        llava.hf_quantizer = lm.hf_quantizer
        llava.is_quantized = True
    return llava


def _add_embedding_rows(lm, rows: int) -> None:
    """Grow the LM's vocabulary to ``rows``; new rows hold the mean embedding (deterministic)."""
    import torch

    old = lm.get_input_embeddings().weight.shape[0]
    lm.resize_token_embeddings(rows, mean_resizing=False)
    with torch.no_grad():
        embeddings = lm.get_input_embeddings().weight
        embeddings[old:] = embeddings[:old].mean(0)
        head = lm.get_output_embeddings()
        if head is not None and head.weight.data_ptr() != embeddings.data_ptr():
            head.weight[old:] = head.weight[:old].mean(0)


def _llava_tokenizer(llm: str | Path, trust_remote_code: bool, fix: str = TRAINING_FIX):
    tokenizer = load_tokenizer(llm, trust_remote_code=trust_remote_code, fix=fix)
    if IMAGE_PLACEHOLDER not in tokenizer.get_vocab():
        tokenizer.add_special_tokens(
            {"additional_special_tokens": [IMAGE_PLACEHOLDER]}, replace_extra_special_tokens=False
        )
    return tokenizer


@dataclass
class VisionProcessor:
    """What xtune needs of a VLM's processor: its tokenizer, its image processor and how images become text.

    transformers' own processor classes may need optional packages for parts xtune does not use (Qwen's
    video processor needs torchvision); this keeps the two parts that matter and the family's rules.

    Attributes:
        tokenizer: The model's tokenizer (pad rule of :func:`xtune.hf.load.load_tokenizer`).
        image_processor: The model's image processor (pixels, and for Qwen the patch grids).
        model_type: The VLM family (a key of :data:`VISION_FAMILIES`).
        image_token: The token an image's features replace, repeated once per feature.
        image_seq_length: Tokens per image for families with a fixed count (LLaVA); None: from the size.
    """

    tokenizer: Any
    image_processor: Any
    model_type: str
    image_token: str
    image_seq_length: int | None = None

    @property
    def family(self) -> VisionFamily:
        return vision_family(self.model_type)

    @property
    def image_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(self.image_token)

    def token_counts(self, sizes: list[tuple[int, int]]) -> list[int]:
        """How many image tokens each image of ``(height, width)`` becomes."""
        if self.image_seq_length is not None:
            return [self.image_seq_length] * len(sizes)
        merge = getattr(self.image_processor, "merge_size", 1) ** 2
        return [self.image_processor.get_number_of_image_patches(h, w, {}) // merge for h, w in sizes]

    def image_text(self, count: int) -> str:
        """The text one image of ``count`` tokens is written as (markers included)."""
        return self.family.image_text.format(tokens=self.image_token * count)

    def pixels(self, images: list) -> dict:
        """The model's image inputs for PIL ``images`` (``pixel_values``, and ``image_grid_thw`` for Qwen)."""
        return dict(self.image_processor(images=images, return_tensors="pt"))

    def save_pretrained(self, folder: str | Path) -> None:
        """Write the tokenizer and the image processor, as ``AutoProcessor`` reads them back."""
        self.tokenizer.save_pretrained(str(folder))
        self.image_processor.save_pretrained(str(folder))


def load_processor(
    path: str | Path,
    *,
    vision_tower: str | Path | None = None,
    trust_remote_code: bool = False,
    fix: str = TRAINING_FIX,
    error: type[XtuneError] = ConfigError,
) -> VisionProcessor:
    """The :class:`VisionProcessor` of the VLM in ``path``, or of the LLaVA composed with ``vision_tower``.

    Raises:
        XtuneError: ``error``, when the tokenizer or image processor cannot be loaded, or ``path`` is not a
            vision-language model.
    """
    from transformers import AutoConfig, AutoImageProcessor

    config = None
    if vision_tower is None:
        try:
            config = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as exc:
            raise error(f"cannot load {model_load_problem(str(path), exc)}. {fix}") from None
        if getattr(config, "vision_config", None) is None:
            raise error(f"{path} is not a vision-language model (its config has no vision_config). {VISION_FIX}")
    source = vision_tower if vision_tower is not None else path
    try:
        image_processor = AutoImageProcessor.from_pretrained(str(source), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        what = "the vision tower's" if vision_tower is not None else "the model's"
        raise error(f"cannot load {what} image processor {model_load_problem(str(source), exc)}. {fix}") from None
    if vision_tower is not None:
        vision_config = _vision_config(vision_tower, trust_remote_code)
        tokenizer = _llava_tokenizer(path, trust_remote_code, fix)
        patches = (vision_config.image_size // vision_config.patch_size) ** 2
        return VisionProcessor(tokenizer, image_processor, "llava", IMAGE_PLACEHOLDER, patches)
    family = vision_family(config.model_type)
    tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code, fix=fix, error=error)
    if tokenizer.chat_template is None:
        tokenizer.chat_template = _processor_chat_template(Path(path))
    image_token = tokenizer.convert_ids_to_tokens(config.image_token_id)
    length = getattr(config, "image_seq_length", None) if family is VISION_FAMILIES["llava"] else None
    return VisionProcessor(tokenizer, image_processor, config.model_type, image_token, length)


def _processor_chat_template(folder: Path) -> str | None:
    """A chat template kept beside the processor rather than the tokenizer (``chat_template.json``)."""
    import json

    file = folder / "chat_template.json"
    if not file.is_file():
        return None
    return json.loads(file.read_text(encoding="utf-8")).get("chat_template")


def llava_processor(processor: VisionProcessor, config):
    """transformers' ``LlavaProcessor`` over ``processor``'s parts, set up for the model ``config``.

    A CLIP tower has a class token that LLaVA-1.5 drops (``default``); SigLIP has none (``full``).
    """
    from transformers import LlavaProcessor

    vision = config.vision_config
    class_token = 1 if vision.model_type.startswith("clip") else 0
    return LlavaProcessor(
        image_processor=processor.image_processor,
        tokenizer=processor.tokenizer,
        patch_size=vision.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        num_additional_image_tokens=class_token,
        image_token=processor.image_token,
        chat_template=processor.tokenizer.chat_template,
    )


def expand_image_markers(messages: list[dict], counts: list[int], processor: VisionProcessor) -> list[dict]:
    """``messages`` with the i-th ``<image>`` marker replaced by the text of image i (its image token once per
    feature, inside the family's markers), so a chat template renders exactly what the model reads.

    Args:
        messages: Conversation messages with string contents.
        counts: Image tokens of each image, in marker order (:meth:`VisionProcessor.token_counts`).
        processor: The model's processor.

    Raises:
        DataError: The number of markers differs from the number of images, or an assistant message holds
            a marker (the model would be trained to write image tokens).
    """
    from xtune.errors import DataError

    found = sum((m.get("content") or "").count(IMAGE_PLACEHOLDER) for m in messages)
    if found != len(counts):
        raise DataError(
            f"the messages hold {found} {IMAGE_PLACEHOLDER} marker(s) but {len(counts)} image(s) are given; "
            f"write one {IMAGE_PLACEHOLDER} where each image belongs"
        )
    remaining = iter(counts)
    expanded = []
    for message in messages:
        content = message.get("content") or ""
        if IMAGE_PLACEHOLDER in content and message.get("role") == "assistant":
            raise DataError(f"an assistant message holds {IMAGE_PLACEHOLDER}; images belong in user turns")
        pieces = content.split(IMAGE_PLACEHOLDER)
        text = pieces[0] + "".join(processor.image_text(next(remaining)) + piece for piece in pieces[1:])
        expanded.append({**message, "content": text} if len(pieces) > 1 else message)
    return expanded


def quantization_skips(config, family: VisionFamily) -> None:
    """Keep the vision tower, the projector and the output layer of a ``BitsAndBytesConfig`` ``config`` out of
    quantisation (training gives them full weights or adapters in the weights' dtype; they are small), for
    training and for ``--bits`` in chat and serve alike."""
    config.llm_int8_skip_modules = [family.vision, *family.projectors, "lm_head"]
