# Qwen3-0.6B: QLoRA, i.e. qwen3_0_6b_lora_alpaca_e3 with the base model loaded in 4 bits
# (NF4 with double quantisation; needs a CUDA GPU with bitsandbytes).
_base_ = ['./qwen3_0_6b_lora_alpaca_e3.py']

model = dict(finetune_type='qlora')
