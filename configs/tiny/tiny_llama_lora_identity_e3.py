# The CPU demo with LoRA: the tiny_llama base stays frozen, adapters on every linear layer learn.
_base_ = ['../_base_/models/lora.py', '../_base_/datasets/identity.py', '../_base_/schedules/cosine.py',
          '../_base_/default_runtime.py']

pretrained_model_name_or_path = 'tiny_llama'  # data/models/tiny_llama, shipped with xtune
model = dict(lora=dict(r=16, lora_alpha=32, lora_dropout=0.0))  # alpha/r = 2: a strong update for a tiny model
name = 'XTuneBot'
author = 'the xtune team'
max_length = 256
pack_to_max_length = False  # ~60 short rows: more, smaller steps learn faster here
batch_size = 4
accumulative_counts = 1
lr = 5e-3  # adapters start at zero; a large step makes them useful within the demo's few hundred steps
max_epochs = 3
warmup_ratio = 0.0
save_steps = 50
