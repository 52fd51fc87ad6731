_base_ = ['./base.py']
model = dict(finetune_type='freeze', freeze=dict(trainable_layers=2, trainable_modules=[]))
