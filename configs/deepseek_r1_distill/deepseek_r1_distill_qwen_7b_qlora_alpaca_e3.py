# DeepSeek-R1-Distill-Qwen-7B: QLoRA, i.e. deepseek_r1_distill_qwen_7b_lora_alpaca_e3,
# with the base model loaded in 4 bits (NF4 with double quantisation; needs a CUDA GPU with bitsandbytes).
_base_ = ['./deepseek_r1_distill_qwen_7b_lora_alpaca_e3.py']

model = dict(finetune_type='qlora')
