# LLaVA-1.5 stage 2 on Llama-3.1-8B-Instruct: LoRA on the LM and the whole projector, on the 665k instruction mix.
# projector = the pretrain stage's work dir or checkpoint, e.g.
#   xtune train llava_llama3_1_8b_instruct_clip_vit_large_p14_336_lora_llava_665k_e1 --deepspeed zero2 \
#     --cfg-options projector=work_dirs/llava_llama3_1_8b_instruct_clip_vit_large_p14_336_pretrain_llava_558k_e1
_base_ = ['../_base_/models/lora.py', '../_base_/datasets/llava_665k.py', '../_base_/schedules/cosine.py',
          '../_base_/default_runtime.py']

pretrained_model_name_or_path = 'meta-llama/Llama-3.1-8B-Instruct'
vision_tower = 'openai/clip-vit-large-patch14-336'
projector = './work_dirs/llava_llama3_1_8b_instruct_clip_vit_large_p14_336_pretrain_llava_558k_e1'
prompt_template = 'llama3'
# LLaVA-1.5's LoRA recipe: r=128, alpha=256 on every linear layer of the LM
model = dict(lora=dict(r=128, lora_alpha=256, lora_dropout=0.05))
batch_size = 16  # per GPU; 8 GPUs give LLaVA-1.5's 128 conversations per step
accumulative_counts = 1
lr = 2e-4
max_epochs = 1
