# Qwen2.5-VL-7B-Instruct with QLoRA: qwen2_5_vl_7b_instruct_lora_mllm_demo_e3 with the model loaded in 4 bits
# (NF4 with double quantisation; needs a CUDA GPU with bitsandbytes).
_base_ = ['./qwen2_5_vl_7b_instruct_lora_mllm_demo_e3.py']

model = dict(finetune_type='qlora')
