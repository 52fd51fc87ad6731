# CPU demo of full-parameter DPO on the shipped tiny_llama with the shipped demo pairs.
_base_ = ['../_base_/models/full.py', '../_base_/stages/dpo.py', '../_base_/preference/tiny_llama.py']

pretrained_model_name_or_path = 'tiny_llama'  # data/models/tiny_llama, shipped with xtune
max_length = 256
batch_size = 4
lr = 1e-3
