# Qwen2.5-7B-Instruct: QLoRA DPO: 4-bit base, LoRA adapters; the reference is the 4-bit base itself,
# on Intel/orca_dpo_pairs (~13k GPT-4 vs Llama-2 answers, from the Hugging Face Hub).
_base_ = ['./qwen2_5_7b_instruct_lora_dpo_orca_pairs_e1.py']

# the 4-bit settings of _base_/models/qlora.py, kept explicit in the resolved config
model = dict(finetune_type='qlora', quantization=dict(bnb_4bit_quant_type='nf4', bnb_4bit_use_double_quant=True))
