# The CPU demo: full fine-tuning of the shipped 1M-parameter tiny_llama on identity data.
_base_ = ['../_base_/models/full.py', '../_base_/datasets/identity.py', '../_base_/schedules/cosine.py',
          '../_base_/default_runtime.py']

pretrained_model_name_or_path = 'tiny_llama'  # data/models/tiny_llama, shipped with xtune
name = 'XTuneBot'
author = 'the xtune team'
max_length = 256
pack_to_max_length = False  # the data is ~60 short rows: more, smaller steps learn faster here
batch_size = 4
accumulative_counts = 1
lr = 1e-3  # a tiny random-init model needs a large step size to learn in a few hundred steps
max_epochs = 3
warmup_ratio = 0.0
save_steps = 50
