# LLaVA-1.5 stage 2 on Qwen2.5-7B-Instruct, every LM weight and the projector trained (the ViT stays frozen).
# Needs ZeRO-3 on 8 x 80 GB: xtune train ... --deepspeed zero3. projector = the pretrain stage's work dir.
_base_ = ['../_base_/models/full.py', '../_base_/datasets/llava_665k.py', '../_base_/schedules/cosine.py',
          '../_base_/default_runtime.py']

pretrained_model_name_or_path = 'Qwen/Qwen2.5-7B-Instruct'
vision_tower = 'openai/clip-vit-large-patch14-336'
projector = './work_dirs/llava_qwen2_5_7b_instruct_clip_vit_large_p14_336_pretrain_llava_558k_e1'
prompt_template = 'qwen2_5'
gradient_checkpointing = True
batch_size = 16  # per GPU
accumulative_counts = 1
lr = 2e-5  # LLaVA-1.5's full finetune learning rate
max_epochs = 1
