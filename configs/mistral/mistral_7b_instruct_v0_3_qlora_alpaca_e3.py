# Mistral-7B-Instruct-v0.3: QLoRA, i.e. mistral_7b_instruct_v0_3_lora_alpaca_e3 with the base model loaded in 4 bits
# (NF4 with double quantisation; needs a CUDA GPU with bitsandbytes).
_base_ = ['./mistral_7b_instruct_v0_3_lora_alpaca_e3.py']

model = dict(finetune_type='qlora')
