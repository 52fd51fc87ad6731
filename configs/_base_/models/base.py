# The causal LM to fine-tune. Leaf configs set pretrained_model_name_or_path (and usually prompt_template).
pretrained_model_name_or_path = None
dtype = 'auto'  # auto = bf16 on GPUs that support it, fp32 on CPU
trust_remote_code = False  # only configs of models that need their repository's code set this
gradient_checkpointing = 'auto'  # auto = on unless a step's estimated memory without it fits the device
# The output layer and loss run this many tokens at a time, so the full-vocabulary logits (8 GiB in fp32
# for 8192 tokens x 128k vocabulary, with their gradient) never exist at once; 0 = compute them whole.
loss_chunk_size = 1024
compile_layers = False  # torch.compile each decoder layer: fewer, fused kernels after a compile of ~1 minute
# Long rows (README "Long sequences"): split every row over this many ranks (Ulysses; the data-parallel size
# becomes ranks / sequence_parallel_size); 1 = off.
sequence_parallel_size = 1
# Keep checkpointed activations (each decoder layer's input, tokens x hidden per layer) in CPU memory until the
# backward pass: for rows whose checkpointed activations alone fill the GPU. Turns gradient checkpointing on.
activation_offload = False
# Run each layer's MLP over tiles of this many tokens (e.g. 8192), recomputed tile by tile in the backward
# pass: the MLP's intermediates of a whole long row never exist at once. 0 = off; one GPU only.
tiled_mlp = 0
# Images (docs/multimodal.md). A vision-language model folder needs none of these; LLaVA-style training composes
# the causal LM above with a CLIP/SigLIP vision tower and a new projector.
vision_tower = None  # LLaVA-style: the ViT folder or hub name, e.g. 'openai/clip-vit-large-patch14-336'
projector = None  # the pretrain stage's projector: its checkpoint (iter_*.pth, ZeRO folder) or converted folder
freeze_llm = False  # True for the pretrain stage: only the projector trains
freeze_vision_tower = True  # LLaVA-1.5 keeps the ViT frozen in both stages
freeze_projector = False
vision_lora = False  # with lora/qlora/dora: LoRA on the ViT's linear layers too

model = dict(
    type='SupervisedFinetune',
    pretrained_model_name_or_path='${pretrained_model_name_or_path}',
    dtype='${dtype}',
    gradient_checkpointing='${gradient_checkpointing}',
    trust_remote_code='${trust_remote_code}',
    loss_chunk_size='${loss_chunk_size}',
    compile_layers='${compile_layers}',
    sequence_parallel_size='${sequence_parallel_size}',
    activation_offload='${activation_offload}',
    tiled_mlp='${tiled_mlp}',
    vision_tower='${vision_tower}',
    projector='${projector}',
    freeze_llm='${freeze_llm}',
    freeze_vision_tower='${freeze_vision_tower}',
    freeze_projector='${freeze_projector}',
    vision_lora='${vision_lora}',
    objective='${objective}',  # the stage's objective: set by the dataset/stage base (sft, dpo, ...)
    # the data's packing and micro-batch size: the model checks its attention keeps packed samples apart,
    # and sizes a step's memory for gradient_checkpointing='auto'
    pack_to_max_length='${pack_to_max_length}',
    tokens_per_batch='${batch_size * max_length}',
)
