# Llama-3.1-8B-Instruct: a reward model (scalar head, AutoModelForSequenceClassification) with LoRA,
# on Intel/orca_dpo_pairs (~13k GPT-4 vs Llama-2 answers, from the Hugging Face Hub).
_base_ = ['../_base_/models/lora.py', '../_base_/stages/rm.py', '../_base_/preference/default.py']

pretrained_model_name_or_path = 'meta-llama/Llama-3.1-8B-Instruct'
prompt_template = 'llama3'
data_path = 'orca_dpo_pairs'
lr = 1e-5  # preference stages move a tuned policy: much smaller steps than SFT
