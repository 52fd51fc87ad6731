# Gemma-2-2B-it: QLoRA, i.e. gemma2_2b_it_lora_alpaca_e3 with the base model loaded in 4 bits
# (NF4 with double quantisation; needs a CUDA GPU with bitsandbytes).
_base_ = ['./gemma2_2b_it_lora_alpaca_e3.py']

model = dict(finetune_type='qlora')
