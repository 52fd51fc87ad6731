_base_ = ['./lora.py']
# 4-bit NF4 with double quantisation (QLoRA paper); compute in the training dtype
model = dict(finetune_type='qlora', quantization=dict(bnb_4bit_quant_type='nf4', bnb_4bit_use_double_quant=True))
