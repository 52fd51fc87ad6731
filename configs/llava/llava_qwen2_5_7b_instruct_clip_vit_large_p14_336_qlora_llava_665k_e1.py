# LLaVA-1.5 stage 2 with QLoRA: llava_qwen2_5_7b_instruct_clip_vit_large_p14_336_lora_llava_665k_e1 with the
# LM loaded in 4 bits (NF4 with double quantisation; needs a CUDA GPU with bitsandbytes); the ViT and the
# projector stay in the training dtype.
_base_ = ['./llava_qwen2_5_7b_instruct_clip_vit_large_p14_336_lora_llava_665k_e1.py']

model = dict(finetune_type='qlora')
