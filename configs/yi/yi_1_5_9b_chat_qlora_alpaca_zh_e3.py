# Yi-1.5-9B-Chat: QLoRA (4-bit NF4 base + LoRA adapters; needs a CUDA GPU with bitsandbytes),
# on Alpaca-GPT4 in Chinese (~49k instructions, from the Hugging Face Hub).
_base_ = ['../_base_/models/qlora.py', '../_base_/datasets/alpaca_zh.py', '../_base_/schedules/cosine.py',
          '../_base_/default_runtime.py']

pretrained_model_name_or_path = '01-ai/Yi-1.5-9B-Chat'
prompt_template = 'yi'
max_length = 2048
batch_size = 1  # per GPU: one row packs several samples into max_length tokens
accumulative_counts = 16  # 16 rows of 2048 tokens: ~32k tokens per optimizer step
lr = 2e-4  # r=64/alpha=16 LoRA (QLoRA paper, XTuner defaults for 7B-class models)
max_epochs = 3
