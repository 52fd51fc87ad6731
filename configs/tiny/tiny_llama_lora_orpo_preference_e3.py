# CPU demo of the orpo stage: LoRA on the shipped tiny_llama with the shipped demo data.
_base_ = ['../_base_/models/lora.py', '../_base_/stages/orpo.py', '../_base_/preference/tiny_llama.py']

pretrained_model_name_or_path = 'tiny_llama'  # data/models/tiny_llama, shipped with xtune
model = dict(lora=dict(r=16, lora_alpha=32, lora_dropout=0.0))
max_length = 256
batch_size = 4
lr = 5e-3  # adapters start at zero: a large step for a tiny model
