# Qwen3-8B: LoRA DPO (sigmoid, beta 0.1) against the initial model; reference log-probs are
# computed once before training,
# on Intel/orca_dpo_pairs (~13k GPT-4 vs Llama-2 answers, from the Hugging Face Hub).
_base_ = ['../_base_/models/lora.py', '../_base_/stages/dpo.py', '../_base_/preference/default.py']

pretrained_model_name_or_path = 'Qwen/Qwen3-8B'
prompt_template = 'qwen3'
data_path = 'orca_dpo_pairs'
lr = 5e-6  # preference stages move a tuned policy: much smaller steps than SFT
