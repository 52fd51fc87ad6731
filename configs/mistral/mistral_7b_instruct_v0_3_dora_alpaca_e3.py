# Mistral-7B-Instruct-v0.3: DoRA (weight-decomposed LoRA) on every linear layer,
# on Stanford Alpaca (52k English instructions, from the Hugging Face Hub).
_base_ = ['../_base_/models/dora.py', '../_base_/datasets/alpaca.py', '../_base_/schedules/cosine.py',
          '../_base_/default_runtime.py']

pretrained_model_name_or_path = 'mistralai/Mistral-7B-Instruct-v0.3'
prompt_template = 'mistral'  # [INST] turns; a system prompt goes before the last user message
model = dict(lora=dict(r=32, lora_alpha=64))  # rank 32, alpha 64: the DoRA paper's setting for 7B-class LLaMA
max_length = 2048
batch_size = 1  # per GPU: one row packs several samples into max_length tokens
accumulative_counts = 16  # 16 rows of 2048 tokens: ~32k tokens per optimizer step
lr = 1e-4  # alpha/r = 2 scales updates 8x more than the LoRA configs' 16/64
max_epochs = 3
