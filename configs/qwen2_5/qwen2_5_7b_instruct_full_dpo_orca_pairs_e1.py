# Qwen2.5-7B-Instruct: full-parameter DPO, meant for --deepspeed zero3 (no second model copy:
# reference log-probs come from one pass before training),
# on Intel/orca_dpo_pairs (~13k GPT-4 vs Llama-2 answers, from the Hugging Face Hub).
_base_ = ['../_base_/models/full.py', '../_base_/stages/dpo.py', '../_base_/preference/default.py']

pretrained_model_name_or_path = 'Qwen/Qwen2.5-7B-Instruct'
prompt_template = 'qwen2_5'
data_path = 'orca_dpo_pairs'
lr = 5e-7  # preference stages move a tuned policy: much smaller steps than SFT
