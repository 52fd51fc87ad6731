# llava-1.5-7b-hf with QLoRA: llava_1_5_7b_hf_lora_mllm_demo_e3 with the model loaded in 4 bits
# (NF4 with double quantisation; needs a CUDA GPU with bitsandbytes).
_base_ = ['./llava_1_5_7b_hf_lora_mllm_demo_e3.py']

model = dict(finetune_type='qlora')
