# Gemma-2-2B-it: LoRA adapters on every linear layer,
# on Stanford Alpaca (52k English instructions, from the Hugging Face Hub).
_base_ = ['../_base_/models/lora.py', '../_base_/datasets/alpaca.py', '../_base_/schedules/cosine.py',
          '../_base_/default_runtime.py']

pretrained_model_name_or_path = 'google/gemma-2-2b-it'
prompt_template = 'gemma'  # Gemma has no system role: a system message is folded into the first user turn
model = dict(
    attn_implementation='eager',  # transformers' Gemma 2 has no sdpa attention (it soft-caps attention scores)
    lora=dict(r=16, lora_alpha=32),  # rank 16, alpha 32 for a small model; the base's r=64/alpha=16 is for 7B+
)
max_length = 2048
batch_size = 1  # per GPU: one row packs several samples into max_length tokens
accumulative_counts = 16  # 16 rows of 2048 tokens: ~32k tokens per optimizer step
lr = 1e-4
max_epochs = 3
