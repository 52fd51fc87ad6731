# Qwen2.5-0.5B (base): full fine-tuning (every weight trains),
# on plain text: continued pretraining (the shipped demo text; use your files).
_base_ = ['../_base_/models/full.py', '../_base_/datasets/pretrain.py', '../_base_/schedules/cosine.py',
          '../_base_/default_runtime.py']

pretrained_model_name_or_path = 'Qwen/Qwen2.5-0.5B'
prompt_template = 'qwen2_5'
max_length = 2048
batch_size = 1  # per GPU: one row packs several samples into max_length tokens
accumulative_counts = 16  # 16 rows of 2048 tokens: ~32k tokens per optimizer step
lr = 2e-5  # continued pretraining: small steps keep what the model already knows
max_epochs = 1
warmup_ratio = 0.01
