_base_ = ['./lora.py']
model = dict(finetune_type='dora')
