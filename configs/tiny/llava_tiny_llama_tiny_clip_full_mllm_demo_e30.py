# The CPU image demo, stage 2: tiny_llama and the projector train on colour and shape questions about the
# demo images (data/mllm_demo.json); the projector starts from stage 1's work dir.
_base_ = ['../_base_/models/full.py', '../_base_/datasets/mllm_demo.py', '../_base_/schedules/cosine.py',
          '../_base_/default_runtime.py']

pretrained_model_name_or_path = 'tiny_llama'
vision_tower = 'tiny_clip'
projector = './work_dirs/llava_tiny_llama_tiny_clip_pretrain_llava_pretrain_demo_e20'
max_length = 256
batch_size = 4
accumulative_counts = 1
lr = 1e-3
max_epochs = 30
warmup_ratio = 0.0
save_steps = 100
