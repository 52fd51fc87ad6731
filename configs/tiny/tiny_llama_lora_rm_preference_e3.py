# CPU demo of the rm stage: LoRA on the shipped tiny_llama with the shipped demo data.
_base_ = ['../_base_/models/lora.py', '../_base_/stages/rm.py', '../_base_/schedules/cosine.py',
          '../_base_/default_runtime.py']

pretrained_model_name_or_path = 'tiny_llama'  # data/models/tiny_llama, shipped with xtune
model = dict(lora=dict(r=16, lora_alpha=32, lora_dropout=0.0))
max_length = 256
batch_size = 4
accumulative_counts = 1
lr = 5e-3  # adapters start at zero: a large step for a tiny model
max_epochs = 3
warmup_ratio = 0.0
save_steps = 50
