# Qwen2.5-7B-Instruct: LoRA KTO on completions labelled desirable/undesirable (kto_tag);
# the shipped demo stands in: set data_path to your labelled data,
# on labelled completions.
_base_ = ['../_base_/models/lora.py', '../_base_/stages/kto.py', '../_base_/preference/default.py']

pretrained_model_name_or_path = 'Qwen/Qwen2.5-7B-Instruct'
prompt_template = 'qwen2_5'
lr = 5e-6  # preference stages move a tuned policy: much smaller steps than SFT
