# The shipped caption demo in LLaVA's JSON layout (data/llava_pretrain_demo.json), for the pretrain stage.
_base_ = ['./vision.py']
data_path = 'llava_pretrain_demo'
