# Qwen2.5-7B-Instruct: LoRA adapters on every linear layer,
# on ShareGPT conversations with function calls (the shipped demo; use your file).
_base_ = ['../_base_/models/lora.py', '../_base_/datasets/sharegpt_demo.py', '../_base_/schedules/cosine.py',
          '../_base_/default_runtime.py']

pretrained_model_name_or_path = 'Qwen/Qwen2.5-7B-Instruct'
prompt_template = 'qwen2_5'
max_length = 2048
batch_size = 1  # per GPU: one row packs several samples into max_length tokens
accumulative_counts = 16  # 16 rows of 2048 tokens: ~32k tokens per optimizer step
lr = 2e-4  # r=64/alpha=16 LoRA (QLoRA paper, XTuner defaults for 7B-class models)
max_epochs = 3
