"""Vision-language models in :class:`~xtune.model.finetune.FinetuneModel`: which parts train, LoRA targets, the
projector checkpoint, the vision inputs of a batch and the zero-weighted term.

A VLM has three parts (their module paths per family are :data:`xtune.hf.vision.VISION_FAMILIES`): the vision
tower (ViT), the projector (vision features -> the LM's hidden states; one module or several, as Qwen3-VL's
``merger`` and its DeepStack mergers, always handled as one) and the language model with its output layer.
The knobs say which parts train:

- ``full`` / ``freeze``: the language model as the type says (nothing with ``freeze_llm``), the ViT unless
  ``freeze_vision_tower`` (frozen by default), the projector unless ``freeze_projector``.
- ``lora`` / ``dora`` / ``qlora``: adapters on the language model's linear layers (not the output layer; none
  with ``freeze_llm``), on the ViT's with ``vision_lora``, never on the projector; a trained projector is a peft
  ``modules_to_save``, so it is saved in the adapter and folded by ``merge_and_unload``.

Batches (:func:`vision_inputs`): the SFT batch plus an optional ``vision`` dict of the image processor's tensors
(``pixel_values``, Qwen's ``image_grid_thw``), absent when the batch holds no image. Every step adds zero times
the sum of the trainable vision-side parameters (:func:`zero_term`): a batch without images, or the ViT layers
LLaVA never reads (it takes the second-to-last layer's features), still gives each of them a gradient (zeros),
so DDP and ZeRO ranks agree on which parameters were used.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from xtune.checkpoint.files import POINTER_NAME, last_checkpoint, read_pointer
from xtune.errors import CheckpointError, ConfigError
from xtune.hf.vision import VisionFamily, quantization_skips, submodule, vision_family

ADAPTER_TYPES = ("lora", "dora", "qlora")


@dataclass(frozen=True)
class VisionSettings:
    """The vision knobs of ``FinetuneModel`` (see its docstring)."""

    vision_tower: str | None = None
    projector: str | None = None
    freeze_llm: bool = False
    freeze_vision_tower: bool = True
    freeze_projector: bool = False
    vision_lora: bool = False

    def changed(self) -> list[str]:
        """The knobs set away from their defaults, as ``name=value``."""
        defaults = VisionSettings()
        return [
            f"{name}={getattr(self, name)!r}"
            for name in self.__dataclass_fields__
            if getattr(self, name) != getattr(defaults, name)
        ]


def check_settings(settings: VisionSettings, finetune_type: str) -> None:
    """Refuse knob combinations that train nothing or mean two things.

    Raises:
        ConfigError: The combination is refused; the message says what to set instead.
    """
    adapters = finetune_type in ADAPTER_TYPES
    if settings.vision_lora and not adapters:
        raise ConfigError(
            f"model.vision_lora=True adds LoRA adapters to the vision tower, but finetune_type='{finetune_type}'. "
            "Use finetune_type='lora' (or dora/qlora), or train the vision tower in full with "
            "freeze_vision_tower=False."
        )
    if adapters and not settings.freeze_vision_tower:
        raise ConfigError(
            f"model.freeze_vision_tower=False with finetune_type='{finetune_type}': adapters train the vision "
            "tower through vision_lora=True. Set vision_lora=True (and leave freeze_vision_tower=True), or use "
            "finetune_type='full' to train it in full."
        )
    if adapters and settings.freeze_llm and not settings.vision_lora:
        raise ConfigError(
            f"model.freeze_llm=True with finetune_type='{finetune_type}' puts adapters nowhere (the language "
            "model is frozen and vision_lora=False). To train only the projector (the pretrain stage) use "
            "finetune_type='full' with freeze_llm=True."
        )
    if finetune_type == "full" and settings.freeze_llm and settings.freeze_vision_tower and settings.freeze_projector:
        raise ConfigError("model.freeze_llm, freeze_vision_tower and freeze_projector are all True: nothing trains.")


def _under(name: str, path: str) -> bool:
    return name == path or name.startswith(path + ".")


def _in_projector(name: str, family: VisionFamily) -> bool:
    return any(_under(name, path) for path in family.projectors)


def vision_family_of(model) -> VisionFamily:
    """The family of a loaded VLM (its ``model_type``)."""
    return vision_family(model.config.model_type)


# ----------------------------------------------------------------------------------------- attention
def choose_attention(vlm, family: VisionFamily, requested: str) -> str:
    """:func:`xtune.model.attention.choose_attention` for a VLM's language model (``auto``: ``xtune_varlen`` on
    a machine without CUDA); the vision tower keeps sdpa. Returns the language model's implementation.

    The language model is set on its own: transformers' ``set_attn_implementation`` on the whole model gives
    the top-level choice to any part whose config is not a registered sub-config (a composed LLaVA's ViT), and
    a ViT reading the text's segment boundaries would attend causally within them.
    """
    from xtune.model.attention import SEGMENT_READERS, VARLEN, uses_attention_interface

    language_model = submodule(vlm, family.language_model)
    if requested == "auto" and not torch.cuda.is_available() and uses_attention_interface(language_model):
        language_model.set_attn_implementation(VARLEN)
    vit = submodule(vlm, family.vision)
    if vit.config._attn_implementation in SEGMENT_READERS:
        vit.set_attn_implementation("sdpa")
    return language_model.config._attn_implementation


def check_packing(vlm, family: VisionFamily, implementation: str) -> None:
    """Packed rows need 1-D positions restarting per sample; families with whole-row 3-D RoPE refuse them.

    Raises:
        ConfigError: The family cannot pack, or the language model's attention would mix packed samples.
    """
    from xtune.model.attention import check_packing as check_language_model

    if not family.packs:
        raise ConfigError(
            f"pack_to_max_length=True, but {vlm.config.model_type} computes its multimodal (3-D RoPE) positions "
            "from whole rows, so samples packed into one row would not be kept apart. Set "
            "pack_to_max_length=False."
        )
    check_language_model(vlm, implementation)


# ----------------------------------------------------------------------------------------- what trains
def set_trainable_parts(vlm, family: VisionFamily, settings: VisionSettings, finetune_type: str) -> None:
    """Apply the freeze knobs after the finetune type has set the language model's ``requires_grad``
    (``full``: all; ``freeze``: its last layers). Before adapters are added."""
    for name, param in vlm.named_parameters():
        if _in_projector(name, family):
            param.requires_grad_(not settings.freeze_projector)
        elif _under(name, family.vision):
            param.requires_grad_(finetune_type in ("full", "freeze") and not settings.freeze_vision_tower)
        elif settings.freeze_llm or finetune_type in ADAPTER_TYPES:
            param.requires_grad_(False)


def _generalised(name: str) -> str:
    """A module name as a regex with its layer indices generalised (``layers\\.\\d+\\.mlp\\.fc1``)."""
    return r"\.".join(r"\d+" if part.isdigit() else re.escape(part) for part in name.split("."))


def lora_targets(vlm, family: VisionFamily, settings: VisionSettings, requested: Any) -> Any:
    """peft ``target_modules`` for a VLM: the linear layers of the language model (unless ``freeze_llm``) and
    of the vision tower (with ``vision_lora``), never the projector nor the output layer.

    ``requested`` is the config's ``lora.target_modules``: ``all-linear`` (every such layer), a list of
    layer names (``["q_proj", "v_proj"]``: those names within the same parts), or a regex string, taken
    as given.

    Raises:
        ConfigError: No layer matches.
    """
    if isinstance(requested, str) and requested != "all-linear":
        return requested
    parts = ([] if settings.freeze_llm else [family.language_model]) + ([family.vision] if settings.vision_lora else [])
    wanted = None if requested == "all-linear" else set(requested)
    patterns: list[str] = []
    for name, module in vlm.named_modules():
        if not isinstance(module, torch.nn.Linear) or _in_projector(name, family):
            continue
        if not any(_under(name, part) for part in parts):
            continue
        if wanted is not None and name.rsplit(".", 1)[-1] not in wanted:
            continue
        pattern = _generalised(name)
        if pattern not in patterns:
            patterns.append(pattern)
    if not patterns:
        raise ConfigError(
            f"model.lora.target_modules={requested!r} matches no linear layer of {', '.join(parts)} in this "
            f"{vlm.config.model_type} model. Use 'all-linear' or names of its layers (e.g. q_proj, v_proj)."
        )
    return "|".join(patterns)


def projector_modules(vlm, family: VisionFamily) -> list[str]:
    """The module names peft's ``modules_to_save`` wraps for the projector: each projector path, or for a
    ``ModuleList`` (Qwen3-VL's ``deepstack_merger_list``) each of its members, since the model indexes the list
    and peft's wrapper around a whole list could not be indexed."""
    names = []
    for path in family.projectors:
        module = submodule(vlm, path)
        if isinstance(module, torch.nn.ModuleList):
            names.extend(f"{path}.{index}" for index in range(len(module)))
        elif module is not None:
            names.append(path)
    return names


def modules_to_save(
    vlm, family: VisionFamily, settings: VisionSettings, requested: list[str] | None
) -> list[str] | None:
    """peft ``modules_to_save``: the config's, plus the projector (:func:`projector_modules`) when it trains."""
    names = list(requested or [])
    if not settings.freeze_projector:
        names.extend(name for name in projector_modules(vlm, family) if name not in names)
    return names or None


def trainable_vision_parameters(vlm, family: VisionFamily) -> list[torch.nn.Parameter]:
    """The trainable parameters of the vision tower and the projector (adapters and saved copies included)."""
    found: dict[int, torch.nn.Parameter] = {}
    for path in (family.vision, *family.projectors):
        module = submodule(vlm, path)
        if module is not None:
            found.update((id(p), p) for p in module.parameters() if p.requires_grad)
    return list(found.values())


def zero_term(parameters: list[torch.nn.Parameter]) -> torch.Tensor | float:
    """Zero, as a function of every parameter in ``parameters``: each gets a gradient (of zeros) even when the
    batch did not use it.

    ZeRO-3-partitioned parameters (``ds_id``, partitioned when DeepSpeed wraps the model) are left out: outside
    their module's forward they hold an empty shard. (DDP's reducer is the one that needs every parameter
    used; ZeRO-3 with images has no test yet.)
    """
    whole = [p for p in parameters if not hasattr(p, "ds_id")]
    if not whole:
        return 0.0
    return sum(p.sum() for p in whole) * 0.0


# ----------------------------------------------------------------------------------------- batches
def token_type_ids(vlm) -> dict[int, int] | None:
    """Token id -> modality (1 image, 2 video) for families whose forward reads ``mm_token_type_ids`` (Qwen-VL's
    3-D positions); None for the others."""
    base = vlm.get_base_model() if hasattr(vlm, "get_base_model") else vlm
    if "mm_token_type_ids" not in inspect.signature(base.model.forward).parameters:
        return None
    config = base.config
    types = {config.image_token_id: 1}
    if getattr(config, "video_token_id", None) is not None:
        types[config.video_token_id] = 2
    return types


def vision_inputs(batch: dict, token_types: dict[int, int] | None) -> dict:
    """The VLM's image inputs for a batch: ``batch['vision']`` (empty when absent), and for Qwen-VL families the
    per-token modality the model computes its positions from (derived from ``input_ids``)."""
    vision = batch.get("vision")
    if not vision:
        return {}
    inputs = dict(vision)
    if token_types is not None:
        ids = batch["input_ids"]
        types = torch.zeros_like(ids, dtype=torch.int32)
        for token, kind in token_types.items():
            types[ids == token] = kind
        inputs["mm_token_type_ids"] = types
    return inputs


# ----------------------------------------------------------------------------------------- projector
PROJECTOR_FIX = (
    "Set model.projector to the pretrain stage's work dir (work_dirs/<pretrain config>), one of its checkpoints "
    "(iter_N.pth, a ZeRO folder), or the folder pth_to_hf converted it to (model.safetensors)."
)


def load_projector(vlm, family: VisionFamily, path: str | Path) -> None:
    """Load the projector weights a pretrain stage trained into ``vlm``'s projector.

    ``path``: an xtune ``.pth`` checkpoint or ZeRO folder (keys ``llm.<projector path>.*``, also under peft's
    wrapper), the pretrain run's work dir (its newest checkpoint, by ``last_checkpoint``), or a transformers
    folder (``model.safetensors``, sharded or not).

    Raises:
        ConfigError: The path cannot be read, holds no projector weights, or their names or shapes differ
            from this model's projector.
    """
    path = Path(path)
    if path.is_dir() and (path / POINTER_NAME).is_file():
        newest = last_checkpoint(path)
        if newest is None:
            raise ConfigError(
                f"model.projector={str(path)!r} is a work dir whose last_checkpoint names {read_pointer(path)!r}, "
                "which does not exist. " + PROJECTOR_FIX
            )
        path = Path(newest)
    modules = {name: submodule(vlm, name) for name in family.projectors}
    expected = {
        f"{name}.{key}": value for name, module in modules.items() for key, value in module.state_dict().items()
    }
    found = _projector_weights(path, family.projectors)
    if not found:
        named = " or ".join(f"'{name}.*'" for name in family.projectors)
        raise ConfigError(
            f"model.projector={str(path)!r} holds no projector weights (none named {named}). " + PROJECTOR_FIX
        )
    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys())
    if missing or unexpected:
        raise ConfigError(
            f"model.projector={str(path)!r} does not fit this model's projector: "
            + (f"it lacks {missing} " if missing else "")
            + (f"it has {unexpected} the projector does not " if unexpected else "")
            + f"(expected {sorted(expected)}). "
            + PROJECTOR_FIX
        )
    for key, value in found.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ConfigError(
                f"model.projector={str(path)!r} does not fit this model's projector: '{key}' is "
                f"{tuple(value.shape)} there but {tuple(expected[key].shape)} here (a pretrain stage of another "
                "language model or vision tower?). " + PROJECTOR_FIX
            )
    for name, module in modules.items():
        module.load_state_dict({key[len(name) + 1 :]: value for key, value in found.items() if _under(key, name)})


def _projector_key(key: str, projectors: tuple[str, ...]) -> str | None:
    """The model's name (``<projector path>.<weight>``) of a checkpoint key, or None when it is not a projector
    weight."""
    key = key.removeprefix("llm.").removeprefix("base_model.model.")
    if ".original_module." in key:
        return None  # peft's untrained copy beside a modules_to_save module
    key = key.replace(".modules_to_save.default.", ".")
    for projector in projectors:
        for prefix in (projector + ".", projector.removeprefix("model.") + "."):  # also the pre-v5 HF layout
            if key.startswith(prefix):
                return projector + "." + key[len(prefix) :]
    return None


def _projector_weights(path: Path, projectors: tuple[str, ...]) -> dict[str, torch.Tensor]:
    if path.is_dir() and (any(path.glob("model*.safetensors")) or (path / "model.safetensors.index.json").exists()):
        return _hf_folder_weights(path, projectors)
    from xtune.convert.checkpoint import read_checkpoint

    try:
        state = read_checkpoint(path).state
    except CheckpointError as exc:
        raise ConfigError(f"model.projector={str(path)!r}: {exc}") from None
    return {name: value for key, value in state.items() if (name := _projector_key(key, projectors)) is not None}


def _hf_folder_weights(folder: Path, projectors: tuple[str, ...]) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError, safe_open

    found = {}
    for file in sorted(folder.glob("model*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as handle:
                for key in handle.keys():
                    name = _projector_key(key, projectors)
                    if name is not None:
                        found[name] = handle.get_tensor(key)
        except (SafetensorError, OSError) as exc:
            raise ConfigError(f"model.projector: cannot read {file}: {exc}. " + PROJECTOR_FIX) from None
    return found


# ----------------------------------------------------------------------------------------- loading
def load(
    path: str, settings: VisionSettings, finetune_type: str, kind: str, *, quantization: Any = None, **loading
) -> tuple[Any, VisionFamily]:
    """The VLM to train and its family: LLaVA composed from the causal LM at ``path`` and
    ``settings.vision_tower``, or the VLM folder at ``path``; the pretrain stage's projector loaded.

    Raises:
        ConfigError: The knobs are refused (:func:`check_settings`), the objective needs another head, or the
            model or projector cannot be loaded.
    """
    from transformers import AutoConfig

    from xtune.hf.vision import compose_llava, load_vision_model

    if kind != "causal_lm":
        raise ConfigError(
            f"{path} is a vision-language model, but this stage trains a {kind} head; xtune trains vision-language "
            "models with the causal-LM objectives (sft, pt)."
        )
    check_settings(settings, finetune_type)
    if settings.vision_tower is not None:
        model = compose_llava(path, settings.vision_tower, quantization=quantization, **loading)
    else:
        config = AutoConfig.from_pretrained(path, trust_remote_code=loading.get("trust_remote_code", False))
        vision_family(config.model_type)  # an unknown family is refused before its weights are loaded
        if quantization is not None:
            quantization_skips(quantization, vision_family(config.model_type))
        model = load_vision_model(path, quantization=quantization, **loading)
    family = vision_family_of(model)
    if settings.projector is not None:
        load_projector(model, family, settings.projector)
    return model, family


def refuse_unsupported(sequence_parallel_size: int, tiled_mlp: int) -> None:
    """Sequence parallelism and tiled MLPs are not built for images yet.

    Raises:
        ConfigError: Either is asked for.
    """
    if sequence_parallel_size > 1:
        raise ConfigError(
            f"sequence_parallel_size={sequence_parallel_size} with a vision-language model: xtune does not split "
            "rows holding images over ranks yet. Set sequence_parallel_size=1."
        )
    if tiled_mlp:
        raise ConfigError(
            f"tiled_mlp={tiled_mlp} with a vision-language model: not supported yet. Set tiled_mlp=0 (and "
            "gradient_checkpointing=True to save activation memory)."
        )
