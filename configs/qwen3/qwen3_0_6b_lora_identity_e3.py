# Qwen3-0.6B: LoRA adapters on every linear layer,
# on the shipped self-cognition data, answering with your name and author.
_base_ = ['../_base_/models/lora.py', '../_base_/datasets/identity.py', '../_base_/schedules/cosine.py',
          '../_base_/default_runtime.py']

pretrained_model_name_or_path = 'Qwen/Qwen3-0.6B'
prompt_template = 'qwen3'  # hybrid thinking: the last answer gets a (possibly empty) <think> block, as officially
# rank 16, alpha 32 for a small model; the base's r=64/alpha=16 is for 7B+
model = dict(lora=dict(r=16, lora_alpha=32))
name = 'XTuneBot'  # who the model will say it is: fills {{name}} and {{author}} in data/identity.json
author = 'the xtune team'
max_length = 512  # the questions and answers are a few dozen tokens
pack_to_max_length = False  # 66 short rows, 4 per step: ~50 optimizer steps over 3 epochs
batch_size = 4
accumulative_counts = 1
lr = 1e-4
max_epochs = 3
