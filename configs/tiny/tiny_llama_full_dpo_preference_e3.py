# CPU demo of full-parameter DPO on the shipped tiny_llama with the shipped demo pairs.
_base_ = ['../_base_/models/full.py', '../_base_/stages/dpo.py', '../_base_/schedules/cosine.py',
          '../_base_/default_runtime.py']

pretrained_model_name_or_path = 'tiny_llama'  # data/models/tiny_llama, shipped with xtune
max_length = 256
batch_size = 4
accumulative_counts = 1
lr = 1e-3
max_epochs = 3
warmup_ratio = 0.0
save_steps = 50
