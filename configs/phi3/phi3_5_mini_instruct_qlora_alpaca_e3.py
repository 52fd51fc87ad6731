# Phi-3.5-mini-instruct (3.8B): QLoRA (4-bit NF4 base + LoRA adapters; needs a CUDA GPU with bitsandbytes),
# on Stanford Alpaca (52k English instructions, from the Hugging Face Hub).
_base_ = ['../_base_/models/qlora.py', '../_base_/datasets/alpaca.py', '../_base_/schedules/cosine.py',
          '../_base_/default_runtime.py']

pretrained_model_name_or_path = 'microsoft/Phi-3.5-mini-instruct'
prompt_template = 'phi3'
# rank 16, alpha 32 for a small model; the base's r=64/alpha=16 is for 7B+
model = dict(lora=dict(r=16, lora_alpha=32))
max_length = 2048
batch_size = 1  # per GPU: one row packs several samples into max_length tokens
accumulative_counts = 16  # 16 rows of 2048 tokens: ~32k tokens per optimizer step
lr = 1e-4
max_epochs = 3
