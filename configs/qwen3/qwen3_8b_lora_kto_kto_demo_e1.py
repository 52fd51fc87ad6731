# Qwen3-8B: LoRA KTO on completions labelled desirable/undesirable (kto_tag);
# the shipped demo stands in: set data_path to your labelled data,
# on labelled completions.
_base_ = ['../_base_/models/lora.py', '../_base_/stages/kto.py', '../_base_/schedules/cosine.py',
          '../_base_/default_runtime.py']

pretrained_model_name_or_path = 'Qwen/Qwen3-8B'
prompt_template = 'qwen3'
max_length = 2048  # per side of a pair
batch_size = 1  # pairs per GPU
accumulative_counts = 16  # 16 pairs per optimizer step
lr = 5e-6  # preference stages move a tuned policy: much smaller steps than SFT
max_epochs = 1
warmup_ratio = 0.1
