_base_ = ['./base.py']
model = dict(finetune_type='full')
