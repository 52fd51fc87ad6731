# Qwen3-VL-8B-Instruct with QLoRA: qwen3_vl_8b_instruct_lora_mllm_demo_e3 with the model loaded in 4 bits
# (NF4 with double quantisation; needs a CUDA GPU with bitsandbytes).
_base_ = ['./qwen3_vl_8b_instruct_lora_mllm_demo_e3.py']

model = dict(finetune_type='qlora')
