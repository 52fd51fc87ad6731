"""The model builder every stage uses: a Hugging Face model with its finetuning type applied.

The builder loads the head its objective asks for (``causal_lm``, or ``sequence_classification`` with
one label for reward models), sets dtype, finetune type, gradient checkpointing and compilation, and
owns checkpoint state. The loss is the objective's (:mod:`xtune.stages`): ``forward(mode='loss')``
hands the batch to it.

``full`` trains every weight; ``freeze`` the last N decoder layers and named modules; ``lora``/``dora``
wrap linear layers with peft adapters; ``qlora`` loads the base in 4 bits (bitsandbytes) first.
Checkpoints hold every weight when every weight trains, else only the trainable ones.

Vision-language models (a VLM folder, or LLaVA composed from a causal LM and ``vision_tower``) go through the
same class; what is particular to them (which parts train, LoRA targets, the projector checkpoint, image
inputs) is :mod:`xtune.model.vision`.
"""

import os
import warnings

import torch
from mmengine.logging import print_log
from mmengine.model import BaseModel

from xtune.errors import ConfigError
from xtune.hf.dtypes import resolve_dtype
from xtune.hf.load import load_model
from xtune.hf.quantization import bnb_config
from xtune.hf.vision import VISION_FIX, is_vision_language
from xtune.model import vision
from xtune.model.attention import attention_inputs, check_packing, choose_attention
from xtune.model.checkpointing import offload_checkpointed_activations, want_checkpointing
from xtune.model.vision import VisionSettings
from xtune.registry import MODELS

FINETUNE_TYPES = ("full", "freeze", "lora", "dora", "qlora")
LORA_DEFAULTS = {
    "r": 64,
    "lora_alpha": 16,
    "lora_dropout": 0.1,
    "target_modules": "all-linear",
    "modules_to_save": None,
}
# Architectures whose causal-LM head is ``lm_head(decoder(...))``, optionally soft-capped: for them the
# chunked loss reproduces the logits' loss (tests/model/test_loss.py checks each against its own logits;
# tests/model/test_vision_finetune.py the VLMs', by the ``model_type`` of their language model). Others train
# on the full logits.
CHUNKED_LOSS_MODEL_TYPES = frozenset(
    {
        "llama",
        "qwen2",
        "qwen3",
        "mistral",
        "mixtral",
        "qwen2_moe",
        "gemma",
        "gemma2",
        "phi3",
        "glm4",
        "qwen2_5_vl_text",
        "qwen3_vl_text",
    }
)


@MODELS.register_module(name="FinetuneModel")
@MODELS.register_module(name="SupervisedFinetune")
class FinetuneModel(BaseModel):
    """A Hugging Face model prepared for one finetuning type, trained by one objective.

    ``SupervisedFinetune`` (the name SFT configs use) is the same class; its default objective is SFT.

    Args:
        pretrained_model_name_or_path: Model directory or hub name.
        finetune_type: One of ``full``, ``freeze``, ``lora``, ``dora``, ``qlora``.
        dtype: ``auto``, ``bf16``, ``fp16`` or ``fp32``: the dtype the weights are loaded in.
        lora: peft LoRA settings (``r``, ``lora_alpha``, ``lora_dropout``, ``target_modules``,
            ``modules_to_save``) for lora, dora and qlora.
        freeze: For ``freeze``: ``trainable_layers`` (the last N decoder layers) and
            ``trainable_modules`` (name substrings, e.g. ``["lm_head"]``).
        quantization: For ``qlora``: ``bnb_4bit_quant_type`` (nf4|fp4), ``bnb_4bit_use_double_quant``,
            ``bnb_4bit_quant_storage``.
        gradient_checkpointing: ``True``, ``False`` or ``"auto"``: on unless the estimated training memory
            without it fits the device with a margin (:mod:`xtune.model.checkpointing`).
        attn_implementation: ``auto`` (see :func:`xtune.model.attention.choose_attention`), ``xtune_varlen``
            (attention per packed sample) or any transformers attention implementation.
        trust_remote_code: Run the model repository's own code. Off unless a config sets it.
        loss_chunk_size: Compute the output layer and cross-entropy this many tokens at a time, never
            holding the full-vocabulary logits; 0 computes the full logits as transformers does. The
            loss is the same either way; architectures outside ``CHUNKED_LOSS_MODEL_TYPES`` and
            ZeRO-3-partitioned output layers always use the full logits.
        compile_layers: ``torch.compile`` each decoder layer (norms, RoPE, MLP activation and LoRA's
            element-wise work fuse into fewer kernels). The first batches of new lengths are slow while it
            compiles; the numbers are those of the uncompiled layers.
        objective: The stage's objective config (``dict(type='dpo', pref_beta=0.1)``); None is SFT.
        pack_to_max_length: Whether the data packs samples into rows: then the model's attention is
            checked now to keep them apart (:func:`xtune.model.attention.check_packing`); None checks at
            the first packed batch.
        tokens_per_batch: Tokens of one micro-batch (batch size x max length), for ``auto`` checkpointing.
        sequence_parallel_size: Split every row over this many ranks (Ulysses; see
            :mod:`xtune.model.sequence_parallel`); 1 is off.
        activation_offload: Keep the activations of checkpointed layers (each layer's input) in CPU memory
            until the backward pass (:func:`xtune.model.checkpointing.offloaded_checkpoint`); turns
            checkpointing on.
        tiled_mlp: Run each layer's MLP over tiles of this many tokens, recomputing them in the backward
            pass (:mod:`xtune.model.tiling`); 0 is off. One device only.
        vision_tower: LLaVA-style: a CLIP/SigLIP model folder or hub name, composed with the causal LM at
            ``pretrained_model_name_or_path`` (:func:`xtune.hf.vision.compose_llava`). A VLM folder as
            ``pretrained_model_name_or_path`` needs none.
        projector: The projector a pretrain stage trained: its ``.pth`` checkpoint, ZeRO folder or converted
            folder (``model.safetensors``).
        freeze_llm: Train no language-model weight (the pretrain stage: only the projector trains).
        freeze_vision_tower: Keep the vision tower frozen (``full``/``freeze``; adapters use ``vision_lora``).
        freeze_projector: Keep the projector frozen (all its modules: Qwen3-VL's ``merger`` and DeepStack mergers).
        vision_lora: With lora/dora/qlora, adapters on the vision tower's linear layers too.
    """

    def __init__(
        self,
        pretrained_model_name_or_path: str,
        finetune_type: str = "lora",
        dtype: str = "auto",
        lora: dict | None = None,
        freeze: dict | None = None,
        quantization: dict | None = None,
        gradient_checkpointing: bool | str = "auto",
        attn_implementation: str = "auto",
        trust_remote_code: bool = False,
        loss_chunk_size: int = 1024,
        compile_layers: bool = False,
        objective: dict | None = None,
        pack_to_max_length: bool | None = None,
        tokens_per_batch: int | None = None,
        sequence_parallel_size: int = 1,
        activation_offload: bool = False,
        tiled_mlp: int = 0,
        vision_tower: str | None = None,
        projector: str | None = None,
        freeze_llm: bool = False,
        freeze_vision_tower: bool = True,
        freeze_projector: bool = False,
        vision_lora: bool = False,
        data_preprocessor: dict | None = None,
    ) -> None:
        super().__init__(data_preprocessor=data_preprocessor)
        from xtune.stages import build_objective

        self.objective = build_objective(objective)
        if finetune_type not in FINETUNE_TYPES:
            raise ConfigError(f"model.finetune_type must be one of {FINETUNE_TYPES}, got '{finetune_type}'.")
        if not isinstance(loss_chunk_size, int) or isinstance(loss_chunk_size, bool) or loss_chunk_size < 0:
            raise ConfigError(
                f"model.loss_chunk_size must be a whole number of tokens (0 = full logits), got {loss_chunk_size!r}."
            )
        self.loss_chunk_size = loss_chunk_size
        self.finetune_type = finetune_type
        self.dtype = resolve_dtype(dtype, knob="model.dtype")
        self.pretrained_model_name_or_path = pretrained_model_name_or_path
        quantized = finetune_type == "qlora"
        self.vision_settings = VisionSettings(
            vision_tower, projector, freeze_llm, freeze_vision_tower, freeze_projector, vision_lora
        )
        loading = dict(
            dtype=self.dtype,
            # bitsandbytes quantises as the weights reach the GPU: load them straight onto this rank's one
            device=int(os.environ.get("LOCAL_RANK", 0)) if quantized else None,
            quantization=self._quantization(quantization or {}) if quantized else None,
            trust_remote_code=trust_remote_code,
            attn_implementation=attn_implementation,
        )
        self.vision_family = None  # the VisionFamily of a vision-language model; None for text
        if vision_tower is not None or is_vision_language(pretrained_model_name_or_path, trust_remote_code):
            self.llm, self.vision_family = vision.load(
                pretrained_model_name_or_path, self.vision_settings, finetune_type, self.objective.model_kind, **loading
            )
            self.attn_implementation = vision.choose_attention(self.llm, self.vision_family, attn_implementation)
            vision.refuse_unsupported(sequence_parallel_size, tiled_mlp)
        else:
            if changed := self.vision_settings.changed():
                raise ConfigError(
                    f"{', '.join(changed)} set, but {pretrained_model_name_or_path} is a text model. " + VISION_FIX
                )
            self.llm = load_model(pretrained_model_name_or_path, kind=self.objective.model_kind, **loading)
            self.attn_implementation = choose_attention(self.llm, attn_implementation)
        self.llm.config.use_cache = False
        self.llm.config.get_text_config().use_cache = False
        self.sequence_parallel_size = sequence_parallel_size
        if sequence_parallel_size > 1:
            from xtune.model import sequence_parallel

            self.attn_implementation = sequence_parallel.setup(self.llm, sequence_parallel_size, attn_implementation)
            if tokens_per_batch:
                tokens_per_batch = -(-tokens_per_batch // sequence_parallel_size)  # each rank holds a slice
        self._packing_checked = False
        if pack_to_max_length:
            self._check_packing()
        if activation_offload and gradient_checkpointing is False:
            raise ConfigError(
                "activation_offload=True offloads the activations that gradient checkpointing keeps, but "
                "gradient_checkpointing=False. Set gradient_checkpointing=True (or 'auto'), or "
                "activation_offload=False."
            )
        if activation_offload or want_checkpointing(gradient_checkpointing, self.llm, finetune_type, tokens_per_batch):
            self.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if finetune_type == "freeze":
            self._apply_freeze(freeze or {})
        if self.vision_family is not None:
            vision.set_trainable_parts(self.llm, self.vision_family, self.vision_settings, finetune_type)
        if finetune_type in vision.ADAPTER_TYPES:
            self._apply_lora({**LORA_DEFAULTS, **(lora or {})}, use_dora=finetune_type == "dora")
        # the trainable vision-side parameters, touched by every step's zero term (see xtune.model.vision)
        self._vision_parameters = []
        self._token_types = None
        if self.vision_family is not None:
            self._vision_parameters = vision.trainable_vision_parameters(self.causal_lm(), self.vision_family)
            self._token_types = vision.token_type_ids(self.causal_lm())
        if not isinstance(tiled_mlp, int) or isinstance(tiled_mlp, bool) or tiled_mlp < 0:
            raise ConfigError(f"tiled_mlp must be a whole number of tokens per tile (0 = off), got {tiled_mlp!r}.")
        if tiled_mlp:
            from xtune.model.tiling import tile_mlps

            tile_mlps(self.causal_lm(), tiled_mlp)
        if activation_offload:
            offload_checkpointed_activations(self.causal_lm())
        self.activation_offload = activation_offload
        if compile_layers:
            # Layers share their code: dynamo compiles it once for all of them (parameters are inputs).
            for layer in self.causal_lm().get_decoder().layers:
                layer.compile()
        trainable = sum(p.numel() for p in self.llm.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.llm.parameters())
        print_log(f"{finetune_type}: {trainable:,} trainable of {total:,} parameters", logger="current")

    # ----------------------------------------------------------------------------- building
    def _quantization(self, settings: dict):
        return bnb_config(
            4,
            self.dtype,
            settings,
            asked_by="qlora",
            fix="Use a lora config here, or run the qlora config on a GPU.",
        )

    def _check_packing(self) -> None:
        if self.vision_family is not None:
            vision.check_packing(self.causal_lm(), self.vision_family, self.attn_implementation)
        else:
            check_packing(self.causal_lm(), self.attn_implementation)
        self._packing_checked = True

    def _apply_freeze(self, freeze: dict) -> None:
        layers_to_train = int(freeze.get("trainable_layers", 2))
        modules = list(freeze.get("trainable_modules", []))
        layers = self.llm.get_decoder().layers
        if layers_to_train > len(layers):
            raise ConfigError(
                f"model.freeze.trainable_layers is {layers_to_train} but the model has {len(layers)} layers."
            )
        self.llm.requires_grad_(False)
        for layer in list(layers)[len(layers) - layers_to_train :]:
            layer.requires_grad_(True)
        for name, module in self.llm.named_modules():
            if any(pattern in name for pattern in modules):
                module.requires_grad_(True)

    def _apply_lora(self, settings: dict, use_dora: bool) -> None:
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

        # transformers renamed is_gradient_checkpointing (a FutureWarning on every read); peft still reads
        # the old name inside get_peft_model, so that one read is silenced here.
        checkpointing = getattr(self.llm, "is_activation_checkpointing", None)
        if checkpointing is None:
            checkpointing = self.llm.is_gradient_checkpointing
        if self.finetune_type == "qlora":
            self.llm = prepare_model_for_kbit_training(self.llm, use_gradient_checkpointing=checkpointing)
        # SEQ_CLS makes peft train (and save) the new score head in full beside the adapters
        task = "SEQ_CLS" if self.objective.model_kind == "sequence_classification" else "CAUSAL_LM"
        if self.vision_family is not None:  # adapters on the language model (and the ViT); the projector in full
            settings["target_modules"] = vision.lora_targets(
                self.llm, self.vision_family, self.vision_settings, settings["target_modules"]
            )
            settings["modules_to_save"] = vision.modules_to_save(
                self.llm, self.vision_family, self.vision_settings, settings["modules_to_save"]
            )
        config = LoraConfig(task_type=task, use_dora=use_dora, **settings)
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
            )
            self.llm = get_peft_model(self.llm, config)

    def init_weights(self) -> None:
        """Nothing to initialise: weights come from the checkpoint and adapters from peft.

        mmengine's Runner calls ``init_weights`` on every child that has one, and transformers' own
        ``init_weights`` would re-draw weights the checkpoint lacks, LoRA's zero-initialised B included.
        """

    # ----------------------------------------------------------------------------- running
    def forward(
        self, input_ids: torch.Tensor | None = None, mode: str = "loss", loss_scale: float | None = None, **batch
    ):
        """``mode="loss"``: the objective's loss (times ``loss_scale``, default its own normaliser) and
        metrics; otherwise the model's logits for the batch (:meth:`model_inputs`).
        ``batch`` is whatever the objective's collate function produced."""
        batch["input_ids"] = input_ids
        if mode == "loss":
            outputs = self.objective.compute(self, batch, loss_scale)
            if self._vision_parameters:
                outputs["loss"] = outputs["loss"] + vision.zero_term(self._vision_parameters)
            return outputs
        return self.llm(**self.model_inputs(batch), use_cache=False).logits

    def model_inputs(self, batch: dict) -> dict:
        """``input_ids`` and the mask inputs of the attention path chosen at build time.

        Packed rows (see :mod:`xtune.model.attention`) come with ``cu_seq_lens`` (segment boundaries over
        the flattened batch) and ``position_ids`` restarting at each sample, and no ``attention_mask``.
        """
        attention_mask, position_ids = batch.get("attention_mask"), batch.get("position_ids")
        if position_ids is not None and attention_mask is None and not self._packing_checked:
            self._check_packing()
        masks = attention_inputs(self.attn_implementation, attention_mask, position_ids, batch.get("cu_seq_lens"))
        if self.vision_family is None and batch.get("vision"):
            raise ConfigError(
                f"the batch holds images but {self.pretrained_model_name_or_path} is a text model. " + VISION_FIX
            )
        return {"input_ids": batch["input_ids"], **masks, **vision.vision_inputs(batch, self._token_types)}

    def causal_lm(self):
        """The transformers causal LM, under peft's wrapper where there is one."""
        return self.llm.get_base_model() if hasattr(self.llm, "get_base_model") else self.llm

    def trunk(self) -> torch.nn.Module:
        """The module whose ``last_hidden_state`` the output layer reads: the decoder, or for a vision-language
        model its base model (the decoder over the text with the image features merged in)."""
        causal_lm = self.causal_lm()
        return causal_lm.model if self.vision_family is not None else causal_lm.get_decoder()

    def _chunkable_head(self) -> torch.nn.Linear | None:
        """The output layer when the chunked loss applies to it, else None."""
        if not self.loss_chunk_size or self.objective.model_kind != "causal_lm":
            return None
        causal_lm = self.causal_lm()
        head = causal_lm.get_output_embeddings()
        model_type = causal_lm.config.get_text_config().model_type  # a VLM's language model
        # exactly nn.Linear: peft's LoRA/modules_to_save wrappers and quantised layers compute differently
        if model_type not in CHUNKED_LOSS_MODEL_TYPES or type(head) is not torch.nn.Linear:
            return None
        if head.bias is not None or hasattr(head.weight, "ds_id"):  # ds_id: a ZeRO-3 shard, gathered in forward
            return None
        return head

    # ----------------------------------------------------------------------------- checkpoints
    def _trains_everything(self) -> bool:
        return all(param.requires_grad for param in self.parameters())

    def state_dict(self, *args, **kwargs) -> dict:
        """All weights when every weight trains (``full`` of a text model); only the trainable ones otherwise
        (adapters, ``freeze``, a VLM's frozen vision tower: a pretrain stage's checkpoint is its projector)."""
        state = super().state_dict(*args, **kwargs)
        if self._trains_everything():
            return state
        trainable = {name for name, param in self.named_parameters() if param.requires_grad}
        for key in [key for key in state if key not in trainable]:
            del state[key]  # in place: the OrderedDict keeps the _metadata mmengine's saver reads
        return state

    def load_state_dict(self, state_dict: dict, strict: bool = True, assign: bool = False):
        """Load a checkpoint; when not every weight trains, missing keys are the frozen base weights."""
        return super().load_state_dict(state_dict, strict=strict and self._trains_everything(), assign=assign)


SupervisedFinetune = FinetuneModel
