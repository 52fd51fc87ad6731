# LLaVA-1.5 stage 1 on Llama-3.1-8B-Instruct: train only the projector (2-layer GELU MLP) that maps CLIP
# ViT-L/14-336 features into the LM, on 558k image captions. The LM and the ViT stay frozen.
# Then: llava_llama3_1_8b_instruct_clip_vit_large_p14_336_lora_llava_665k_e1 with projector= this run's work dir.
_base_ = ['../_base_/models/full.py', '../_base_/datasets/llava_558k.py', '../_base_/schedules/cosine.py',
          '../_base_/default_runtime.py']

pretrained_model_name_or_path = 'meta-llama/Llama-3.1-8B-Instruct'
vision_tower = 'openai/clip-vit-large-patch14-336'
freeze_llm = True
prompt_template = 'llama3'
batch_size = 32  # per GPU; 8 GPUs give LLaVA-1.5's 256 captions per step
accumulative_counts = 1
lr = 1e-3  # LLaVA-1.5's projector learning rate
weight_decay = 0.0
max_epochs = 1
