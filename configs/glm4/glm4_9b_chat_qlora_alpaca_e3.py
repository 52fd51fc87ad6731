# GLM-4-9B-Chat: QLoRA, i.e. glm4_9b_chat_lora_alpaca_e3 with the base model loaded in 4 bits
# (NF4 with double quantisation; needs a CUDA GPU with bitsandbytes).
_base_ = ['./glm4_9b_chat_lora_alpaca_e3.py']

model = dict(finetune_type='qlora')
trust_remote_code = True  # the model's own code from its Hub repository, as in the base config
