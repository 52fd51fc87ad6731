# Gemma-2-9B-it: QLoRA (4-bit NF4 base + LoRA adapters; needs a CUDA GPU with bitsandbytes),
# on Stanford Alpaca (52k English instructions, from the Hugging Face Hub).
_base_ = ['../_base_/models/qlora.py', '../_base_/datasets/alpaca.py', '../_base_/schedules/cosine.py',
          '../_base_/default_runtime.py']

pretrained_model_name_or_path = 'google/gemma-2-9b-it'
prompt_template = 'gemma'  # Gemma has no system role: a system message is folded into the first user turn
# transformers' Gemma 2 has no sdpa attention (it soft-caps attention scores)
model = dict(attn_implementation='eager')
max_length = 2048
batch_size = 1  # per GPU: one row packs several samples into max_length tokens
accumulative_counts = 16  # 16 rows of 2048 tokens: ~32k tokens per optimizer step
lr = 2e-4  # r=64/alpha=16 LoRA (QLoRA paper, XTuner defaults for 7B-class models)
max_epochs = 3
