# Phi-3.5-mini-instruct (3.8B): QLoRA, i.e. phi3_5_mini_instruct_lora_alpaca_e3 with the base model loaded in 4 bits
# (NF4 with double quantisation; needs a CUDA GPU with bitsandbytes).
_base_ = ['./phi3_5_mini_instruct_lora_alpaca_e3.py']

model = dict(finetune_type='qlora')
