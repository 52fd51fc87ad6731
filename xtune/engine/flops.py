"""Training FLOPs of a model on a batch: what the throughput hook's ``tflops`` and ``mfu`` are made of.

The convention is model FLOPs, as in PaLM's MFU: a token multiplied by N parameters costs 2N FLOPs
forward and 4N backward, 6N in all, for every part of the model whether it trains or not (LoRA's frozen
base weights, a frozen vision tower), so MFU compares runs on one footing. Recomputation under gradient
checkpointing is not counted. Which parameters multiply which token is read from the model's structure:

- Text: every parameter of the language model and its output layer but the input embedding (a lookup;
  an output layer tied to it still counts). Norm weights and biases count too, as in the usual 6N; that
  is all that ``torch.utils.flop_counter`` (which counts matmuls) sees differently
  (``tests/engine/test_flops.py``).
- Mixture of experts: a token goes through top-k of a layer's E routed experts, so each routed-experts
  module counts k/E of its parameters. Routers and shared experts run for every token and count in full;
  dense layers (DeepSeek's ``first_k_dense_replace``, Qwen's ``mlp_only_layers`` and
  ``decoder_sparse_step``) hold no experts module, so nothing is discounted there. Where the experts sit
  and which config key is k is :data:`MOE_FAMILIES`; an MoE not listed there counts every expert for
  every token (an upper bound), and :func:`model_flops` returns a note saying so, which the hook logs
  once and writes to ``throughput.json``.
- Vision-language models (:data:`VISION_TOWERS`): the tower's layers count per token the tower runs (the
  image's patches, plus CLIP's class token), its patch embedding per patch, the projector per image
  feature it maps into the text, SigLIP's pooling head once per image; lookups (position and class
  embeddings) do not count. The image placeholder tokens are ordinary language-model tokens. LLaVA runs
  every tower layer though it reads the second-to-last one's features: the last one counts like the rest.
- Attention, per layer: causal over each text sample of L tokens, 6 x width x L^2 (two matmuls over half
  the L x L square, x3 for backward); the vision tower attends both ways within each image frame (and
  Qwen2.5-VL's window layers within each window, partitioned as transformers does): 12 x width x S^2.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from xtune.hf.vision import VISION_FAMILIES, submodule


def full_numel(param: torch.Tensor) -> int:
    """Elements of a parameter as the model uses it: whole under ZeRO-3, unpacked under 4-bit."""
    if hasattr(param, "ds_numel"):  # a ZeRO-3 shard
        return int(param.ds_numel)
    quant_state = getattr(param, "quant_state", None)  # bitsandbytes 4-bit: packed two to a byte
    if quant_state is not None:
        return int(quant_state.shape.numel())
    return param.numel()


def _numel(modules) -> int:
    """Parameters of ``modules`` (None entries skipped), each shared parameter once."""
    params = {id(p): p for module in modules if module is not None for p in module.parameters()}
    return sum(full_numel(p) for p in params.values())


# ------------------------------------------------------------------------------------- mixture of experts
@dataclass(frozen=True)
class MoeFamily:
    """Where an MoE family keeps its routed experts and how many a token goes through.

    Attributes:
        experts: Name of the routed-experts module in each MoE block (all experts' weights, stacked in
            transformers 5 or a ``ModuleList`` before); shared experts and the router sit beside it.
        top_k: Config key (of the text config) of the experts each token is routed to.
    """

    experts: str = "experts"
    top_k: str = "num_experts_per_tok"


_TRANSFORMERS_MOE = MoeFamily()
MOE_FAMILIES: dict[str, MoeFamily] = {
    model_type: _TRANSFORMERS_MOE
    for model_type in (
        "mixtral",
        "qwen2_moe",
        "qwen3_moe",
        "qwen3_next",
        "qwen3_vl_moe_text",
        "qwen3_5_moe_text",
        "deepseek_v2",
        "deepseek_v3",
        "olmoe",
        "flex_olmo",
        "phimoe",
        "granitemoe",
        "granitemoeshared",
        "glm4_moe",
        "gpt_oss",
        "ernie4_5_moe",
        "minimax",
        "jamba",
        "llama4_text",
    )
}
"""Text ``model_type`` -> :class:`MoeFamily`, for every MoE whose FLOPs count active experts only
(each checked against its transformers model in ``tests/engine/test_flops.py``)."""

# config keys that give an MoE away, to recognise one missing from MOE_FAMILIES
_EXPERT_COUNT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")


def expert_count(experts: torch.nn.Module) -> int:
    """How many experts an experts module holds: a ``ModuleList``'s length, else its leading dimension."""
    base = getattr(experts, "base_layer", experts)  # under peft's wrapper of a module's parameters
    if isinstance(base, torch.nn.ModuleList):
        return len(base)
    if getattr(base, "num_experts", None):
        return int(base.num_experts)
    param = next(base.parameters(recurse=False))
    return int(param.ds_shape[0] if hasattr(param, "ds_shape") else param.shape[0])


def _unused_expert_parameters(causal_lm: torch.nn.Module, text_config) -> tuple[int, str | None]:
    """Parameters of the routed experts a token does not go through, and a note when an MoE is not known."""
    family = MOE_FAMILIES.get(text_config.model_type)
    if family is None:
        experts = [getattr(text_config, key, None) for key in _EXPERT_COUNT_KEYS]
        if any(isinstance(count, int) and count > 1 for count in experts) or any(
            name.rsplit(".", 1)[-1] == "experts" for name, _ in causal_lm.named_modules()
        ):
            return 0, (
                f"'{text_config.model_type}' looks like a mixture-of-experts model that xtune.engine.flops."
                "MOE_FAMILIES does not list: its FLOPs count every expert for every token, so tflops and mfu "
                "are overstated (an upper bound). Add the family to MOE_FAMILIES to count active experts only."
            )
        return 0, None
    top_k = getattr(text_config, family.top_k, None)
    if not isinstance(top_k, int) or top_k < 1:
        return 0, (
            f"the config of this '{text_config.model_type}' model has no {family.top_k} (experts per token): its "
            "FLOPs count every expert for every token, so tflops and mfu are overstated (an upper bound)."
        )
    unused = 0
    for name, module in causal_lm.named_modules():
        if name.rsplit(".", 1)[-1] == family.experts:
            count = expert_count(module)
            unused += _numel([module]) * (count - top_k) // count
    return unused, None


# ----------------------------------------------------------------------------------------- vision
@dataclass(frozen=True)
class TowerRule:
    """How a VLM family's vision side runs per image (module paths from the transformers model's root).

    Attributes:
        grids: Qwen-VL: the batch lists each image's patch grid (``image_grid_thw``), patches merged
            ``spatial_merge_size`` x ``spatial_merge_size`` into one feature; else LLaVA: whole images in
            ``pixel_values`` cut into ``patch_size`` squares, one feature per tower token kept.
        per_image: Modules that run once per image (SigLIP's pooling head, which LLaVA runs but never reads).
        windows: Qwen2.5-VL: layers outside ``fullatt_block_indexes`` attend within windows.
    """

    grids: bool
    per_image: tuple[str, ...] = ()
    windows: bool = False


VISION_TOWERS: dict[str, TowerRule] = {
    # SigLIP's pooling head: at the tower's top in transformers 5, under vision_model before
    "llava": TowerRule(False, ("model.vision_tower.head", "model.vision_tower.vision_model.head")),
    "qwen2_vl": TowerRule(True),
    "qwen2_5_vl": TowerRule(True, windows=True),
    "qwen3_vl": TowerRule(True),
}
"""VLM ``model_type`` (a key of :data:`xtune.hf.vision.VISION_FAMILIES`) -> :class:`TowerRule`. The modules
that run once per image feature are the family's projectors (:attr:`xtune.hf.vision.VisionFamily.projectors`)."""

# tower parameters read by index rather than multiplied: CLIP's class token (nn.Embedding tables aside)
_LOOKUP_PARAMETERS = ("class_embedding",)


@dataclass(frozen=True)
class VisionWork:
    """What a batch's images make the vision side do."""

    images: int = 0
    patches: int = 0  # through the patch embedding
    tokens: int = 0  # through the tower's layers
    features: int = 0  # through the projector
    attention: list[tuple[int, list[int]]] = field(default_factory=list)  # (layers, sequence lengths)


@dataclass(frozen=True)
class VisionCost:
    """A VLM's vision-side parameters by how often they run, and the shape of its tower's attention."""

    rule: TowerRule
    config: object  # the vision config
    layer_parameters: int
    patch_parameters: int
    projector_parameters: int
    image_parameters: int
    class_tokens: int
    feature_drops_class: bool  # LLaVA's 'default' feature selection drops the first token

    @property
    def layers(self) -> int:
        return int(getattr(self.config, "depth", None) or self.config.num_hidden_layers)

    @property
    def width(self) -> int:
        """Heads x head size of the tower's attention (Qwen2-VL calls the tower's width ``embed_dim``)."""
        return int(getattr(self.config, "embed_dim", None) or self.config.hidden_size)

    def work(self, vision_inputs: dict) -> VisionWork:
        """What the images of a batch's vision inputs (the image processor's tensors) make the tower do."""
        if self.rule.grids:
            return self._grid_work(vision_inputs)
        pixels = vision_inputs.get("pixel_values")
        if pixels is None:
            return VisionWork()
        images, patch = pixels.shape[0], self.config.patch_size
        patches = (pixels.shape[-2] // patch) * (pixels.shape[-1] // patch)
        tokens = patches + self.class_tokens
        features = tokens - 1 if self.feature_drops_class else tokens
        return VisionWork(
            images, images * patches, images * tokens, images * features, [(self.layers, [tokens] * images)]
        )

    def _grid_work(self, vision_inputs: dict) -> VisionWork:
        grids = [g for key in ("image_grid_thw", "video_grid_thw") if (g := vision_inputs.get(key)) is not None]
        if not grids:
            return VisionWork()
        thw = [tuple(int(x) for x in row) for row in torch.cat([g.reshape(-1, 3) for g in grids]).tolist()]
        merge = self.config.spatial_merge_size
        patches = sum(t * h * w for t, h, w in thw)
        frames = [h * w for t, h, w in thw for _ in range(t)]  # each frame attends within itself
        full_layers = self.layers
        attention = []
        if self.rule.windows:
            full_layers = len(self.config.fullatt_block_indexes)
            window = self.config.window_size // merge // self.config.patch_size
            windows = [s for t, h, w in thw for s in window_lengths(t, h, w, merge, window)]
            attention.append((self.layers - full_layers, windows))
        attention.append((full_layers, frames))
        return VisionWork(len(thw), patches, patches, patches // (merge * merge), attention)

    def flops(self, vision_inputs: dict) -> float:
        """Forward + backward FLOPs of the vision side on a batch's images (see the module docstring)."""
        work = self.work(vision_inputs)
        matmuls = (
            self.layer_parameters * work.tokens
            + self.patch_parameters * work.patches
            + self.projector_parameters * work.features
            + self.image_parameters * work.images
        )
        attention = sum(layers * sum(s * s for s in lengths) for layers, lengths in work.attention)
        return 6.0 * matmuls + 12.0 * self.width * attention


def window_lengths(frames: int, height: int, width: int, merge: int, window: int) -> list[int]:
    """Sequence lengths of Qwen2.5-VL's attention windows over a grid of ``frames`` x ``height`` x ``width``
    patches: tiles of ``window`` x ``window`` merged patches (smaller at the bottom and right edges), per frame."""
    rows, cols = height // merge, width // merge
    heights = [min(window, rows - i) for i in range(0, rows, window)]
    widths = [min(window, cols - j) for j in range(0, cols, window)]
    return [h * w * merge * merge for h in heights for w in widths] * frames


def vision_cost(vlm: torch.nn.Module) -> VisionCost:
    """The :class:`VisionCost` of a transformers VLM of a family in :data:`VISION_TOWERS`."""
    model_type = vlm.config.model_type
    rule, family = VISION_TOWERS[model_type], VISION_FAMILIES[model_type]
    tower = submodule(vlm, family.vision)
    convs = [m for m in tower.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)]  # the patch embedding
    lookups = [m for m in tower.modules() if isinstance(m, torch.nn.Embedding)]
    looked_up = sum(full_numel(p) for n, p in tower.named_parameters() if n.rsplit(".", 1)[-1] in _LOOKUP_PARAMETERS)
    projectors = [submodule(vlm, path) for path in family.projectors]
    per_image = [submodule(vlm, path) for path in rule.per_image]
    inside = [m for m in projectors + per_image if m is not None and any(m is t for t in tower.modules())]
    embeddings = submodule(tower, "vision_model.embeddings") or getattr(tower, "embeddings", None)
    class_tokens = 0
    if embeddings is not None and hasattr(embeddings, "num_positions"):
        class_tokens = int(embeddings.num_positions - embeddings.num_patches)  # CLIP 1, SigLIP 0
    return VisionCost(
        rule=rule,
        config=vlm.config.vision_config,
        layer_parameters=_numel([tower]) - _numel(convs) - _numel(lookups) - looked_up - _numel(inside),
        patch_parameters=_numel(convs),
        projector_parameters=_numel(projectors),
        image_parameters=_numel(per_image),
        class_tokens=class_tokens,
        feature_drops_class=getattr(vlm.config, "vision_feature_select_strategy", None) == "default",
    )


# ----------------------------------------------------------------------------------------- the model
def matmul_parameters(causal_lm: torch.nn.Module) -> int:
    """Parameters each text token is multiplied by: the language model and its output layer, but the input
    embedding (unless the output layer is it), a VLM's vision side and the routed experts a token skips."""
    return _text_parameters(causal_lm)[0]


def _text_parameters(causal_lm: torch.nn.Module) -> tuple[int, str | None]:
    """:func:`matmul_parameters`, and the note of an MoE it could not count by active experts."""
    text = causal_lm.config.get_text_config()
    embedding = causal_lm.get_input_embeddings().weight
    output = causal_lm.get_output_embeddings()
    tied = output is not None and output.weight is embedding
    vision = []
    family = VISION_FAMILIES.get(causal_lm.config.model_type)
    if family is not None:
        rule = VISION_TOWERS.get(causal_lm.config.model_type, TowerRule(False))
        paths = (family.vision, *family.projectors, *rule.per_image)
        vision = [submodule(causal_lm, path) for path in paths]
    unused, note = _unused_expert_parameters(causal_lm, text)
    return _numel([causal_lm]) - (0 if tied else full_numel(embedding)) - _numel(vision) - unused, note


def attention_width(config) -> int:
    """Query heads x head size (not always the hidden size, e.g. Qwen 3, Gemma)."""
    heads = getattr(config, "num_attention_heads", 0) or 0
    head_dim = getattr(config, "head_dim", None) or (config.hidden_size // max(heads, 1))
    return heads * head_dim


def training_flops(matmul_params: int, layers: int, width: int, lengths: list[int]) -> float:
    """Forward + backward FLOPs of text samples of the given lengths.

    Per token 6 x ``matmul_params``; per sample of ``L`` tokens, causal attention's two matmuls (scores
    and weighted values, 2 x 2 x L^2/2 x width each layer forward) times 3 for the backward pass:
    6 x layers x width x L^2.
    """
    tokens = sum(lengths)
    return 6.0 * matmul_params * tokens + 6.0 * layers * width * sum(n * n for n in lengths)


@dataclass(frozen=True)
class ModelFlops:
    """A model's FLOPs per batch: text tokens through the language model, images through the vision side.

    Attributes:
        text_parameters: :func:`matmul_parameters`.
        layers: Decoder layers (for attention).
        width: :func:`attention_width` of the language model.
        vision: The vision side of a VLM; None for a text model.
        notes: What the count could not get right (an MoE family it does not know), to log once.
    """

    text_parameters: int
    layers: int
    width: int
    vision: VisionCost | None = None
    notes: tuple[str, ...] = ()

    def batch_flops(self, lengths: list[int], vision_inputs: dict | None = None) -> float:
        """Forward + backward FLOPs of text samples of ``lengths`` and the images in ``vision_inputs``."""
        flops = training_flops(self.text_parameters, self.layers, self.width, lengths)
        if self.vision is not None and vision_inputs:
            flops += self.vision.flops(vision_inputs)
        return flops


def model_flops(causal_lm: torch.nn.Module) -> ModelFlops:
    """The :class:`ModelFlops` of a transformers causal LM or vision-language model (under peft's wrapper's
    ``get_base_model()`` if adapted)."""
    text = causal_lm.config.get_text_config()  # a vision-language model's language model
    text_parameters, note = _text_parameters(causal_lm)  # one walk over the modules for both
    vision = vision_cost(causal_lm) if causal_lm.config.model_type in VISION_TOWERS else None
    return ModelFlops(
        text_parameters=text_parameters,
        layers=getattr(text, "num_hidden_layers", 0) or 0,
        width=attention_width(text),
        vision=vision,
        notes=(note,) if note else (),
    )
