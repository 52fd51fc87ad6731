# Yi-1.5-6B-Chat: QLoRA, i.e. yi_1_5_6b_chat_lora_alpaca_e3 with the base model loaded in 4 bits
# (NF4 with double quantisation; needs a CUDA GPU with bitsandbytes).
_base_ = ['./yi_1_5_6b_chat_lora_alpaca_e3.py']

model = dict(finetune_type='qlora')
