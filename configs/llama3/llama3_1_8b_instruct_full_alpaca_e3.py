# Llama-3.1-8B-Instruct: full fine-tuning (every weight trains),
# on Stanford Alpaca (52k English instructions, from the Hugging Face Hub).
# Estimated peak GPU memory ~73 GiB, at the limit of one 80 GB GPU (docs/model_zoo.md);
# --deepspeed zero3 spreads weights, gradients and optimizer states over several GPUs.
_base_ = ['../_base_/models/full.py', '../_base_/datasets/alpaca.py', '../_base_/schedules/cosine.py',
          '../_base_/default_runtime.py']

pretrained_model_name_or_path = 'meta-llama/Llama-3.1-8B-Instruct'
prompt_template = 'llama3'
max_length = 2048
batch_size = 1  # per GPU: one row packs several samples into max_length tokens
accumulative_counts = 16  # 16 rows of 2048 tokens: ~32k tokens per optimizer step
lr = 1e-5  # every weight of a 7B+ model moves: small steps keep training stable
max_epochs = 3
