# Llama-3.1-8B-Instruct: LoRA SimPO (length-normalised margin), no reference model,
# on Intel/orca_dpo_pairs (~13k GPT-4 vs Llama-2 answers, from the Hugging Face Hub).
_base_ = ['../_base_/models/lora.py', '../_base_/stages/simpo.py', '../_base_/preference/default.py']

pretrained_model_name_or_path = 'meta-llama/Llama-3.1-8B-Instruct'
prompt_template = 'llama3'
data_path = 'orca_dpo_pairs'
lr = 1e-6  # preference stages move a tuned policy: much smaller steps than SFT
