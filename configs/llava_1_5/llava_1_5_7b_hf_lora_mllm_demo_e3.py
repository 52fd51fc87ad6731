# llava-hf/llava-1.5-7b-hf (LLaVA-1.5 in transformers' LlavaForConditionalGeneration): LoRA on the language
# model and the whole projector, the CLIP tower frozen, on image-text conversations (LLaMA-Factory's layout).
_base_ = ['../_base_/models/lora.py', '../_base_/datasets/mllm_demo.py', '../_base_/schedules/cosine.py',
          '../_base_/default_runtime.py']

pretrained_model_name_or_path = 'llava-hf/llava-1.5-7b-hf'
prompt_template = 'llava'  # USER: ... ASSISTANT: ...</s>, as LLaVA-1.5 was trained
pack_to_max_length = True  # LLaVA rows pack: positions restart per sample, attention stays per sample
max_length = 2048
model = dict(lora=dict(r=128, lora_alpha=256, lora_dropout=0.05))
batch_size = 4  # per GPU: packed rows of 2048 tokens (each image is 576 of them)
accumulative_counts = 4
lr = 2e-4
max_epochs = 3
