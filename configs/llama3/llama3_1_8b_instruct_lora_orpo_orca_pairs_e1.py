# Llama-3.1-8B-Instruct: LoRA ORPO (SFT on chosen + 0.1 x odds ratio), no reference model,
# on Intel/orca_dpo_pairs (~13k GPT-4 vs Llama-2 answers, from the Hugging Face Hub).
_base_ = ['../_base_/models/lora.py', '../_base_/stages/orpo.py', '../_base_/schedules/cosine.py',
          '../_base_/default_runtime.py']

pretrained_model_name_or_path = 'meta-llama/Llama-3.1-8B-Instruct'
prompt_template = 'llama3'
data_path = 'orca_dpo_pairs'
max_length = 2048  # per side of a pair
batch_size = 1  # pairs per GPU
accumulative_counts = 16  # 16 pairs per optimizer step
lr = 8e-6  # preference stages move a tuned policy: much smaller steps than SFT
max_epochs = 1
warmup_ratio = 0.1
