# Qwen2.5-0.5B-Instruct: QLoRA, i.e. qwen2_5_0_5b_instruct_lora_alpaca_e3 with the base model loaded in 4 bits
# (NF4 with double quantisation; needs a CUDA GPU with bitsandbytes).
_base_ = ['./qwen2_5_0_5b_instruct_lora_alpaca_e3.py']

model = dict(finetune_type='qlora')
