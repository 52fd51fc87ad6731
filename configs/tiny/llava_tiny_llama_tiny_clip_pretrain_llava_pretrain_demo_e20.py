# The CPU image demo, stage 1: only the projector between the shipped tiny CLIP tower and tiny_llama trains,
# on 12 captions of generated shapes (data/llava_pretrain_demo.json).
_base_ = ['../_base_/models/full.py', '../_base_/datasets/llava_pretrain_demo.py', '../_base_/schedules/cosine.py',
          '../_base_/default_runtime.py']

pretrained_model_name_or_path = 'tiny_llama'  # data/models/tiny_llama, shipped with xtune
vision_tower = 'tiny_clip'  # data/models/tiny_clip: 32 x 32 images, 16 image tokens each
freeze_llm = True
max_length = 256
batch_size = 4
accumulative_counts = 1
lr = 1e-3
max_epochs = 20
warmup_ratio = 0.0
save_steps = 30
