# Llama-3.2-3B-Instruct: freeze tuning (only the last 2 decoder layers train),
# on Stanford Alpaca (52k English instructions, from the Hugging Face Hub).
_base_ = ['../_base_/models/freeze.py', '../_base_/datasets/alpaca.py', '../_base_/schedules/cosine.py',
          '../_base_/default_runtime.py']

pretrained_model_name_or_path = 'meta-llama/Llama-3.2-3B-Instruct'
prompt_template = 'llama3'
max_length = 2048
batch_size = 1  # per GPU: one row packs several samples into max_length tokens
accumulative_counts = 16  # 16 rows of 2048 tokens: ~32k tokens per optimizer step
lr = 5e-5  # between full (2e-5) and LoRA (1e-4): few layers move, each can move further
max_epochs = 3
