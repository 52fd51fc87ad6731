# QLoRA on the tiny model: tiny_llama_lora_identity_e3 with the base loaded in 4 bits. Needs a CUDA GPU
# (bitsandbytes); on a CPU it stops with an error that says so.
_base_ = ['./tiny_llama_lora_identity_e3.py']

model = dict(finetune_type='qlora')
