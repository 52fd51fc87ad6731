# Qwen2.5-1.5B-Instruct: full fine-tuning (every weight trains),
# on Stanford Alpaca (52k English instructions, from the Hugging Face Hub).
_base_ = ['../_base_/models/full.py', '../_base_/datasets/alpaca.py', '../_base_/schedules/cosine.py',
          '../_base_/default_runtime.py']

pretrained_model_name_or_path = 'Qwen/Qwen2.5-1.5B-Instruct'
prompt_template = 'qwen2_5'
max_length = 2048
batch_size = 1  # per GPU: one row packs several samples into max_length tokens
accumulative_counts = 16  # 16 rows of 2048 tokens: ~32k tokens per optimizer step
lr = 2e-5  # every weight moves: about 10x smaller steps than LoRA
max_epochs = 3
