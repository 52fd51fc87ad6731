# QLoRA on the tiny model: the same as the LoRA demo with the base loaded in 4 bits. Needs a CUDA GPU
# (bitsandbytes); on a CPU it stops with an error that says so.
_base_ = ['../_base_/models/qlora.py', '../_base_/datasets/identity.py', '../_base_/schedules/cosine.py',
          '../_base_/default_runtime.py']

pretrained_model_name_or_path = 'tiny_llama'
model = dict(lora=dict(r=16, lora_alpha=32, lora_dropout=0.0))
name = 'XTuneBot'
author = 'the xtune team'
max_length = 256
pack_to_max_length = False
batch_size = 4
accumulative_counts = 1
lr = 5e-3
max_epochs = 3
warmup_ratio = 0.0
save_steps = 50
