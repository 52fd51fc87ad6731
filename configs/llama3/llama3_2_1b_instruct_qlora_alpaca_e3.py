# Llama-3.2-1B-Instruct: QLoRA, i.e. llama3_2_1b_instruct_lora_alpaca_e3 with the base model loaded in 4 bits
# (NF4 with double quantisation; needs a CUDA GPU with bitsandbytes).
_base_ = ['./llama3_2_1b_instruct_lora_alpaca_e3.py']

model = dict(finetune_type='qlora')
