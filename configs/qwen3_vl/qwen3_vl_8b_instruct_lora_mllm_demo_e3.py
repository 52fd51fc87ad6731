# Qwen3-VL-8B-Instruct: LoRA on the language model (the vision tower and the projector stay frozen), on image-text
# conversations in LLaMA-Factory's layout (messages + images; data/mllm_demo.json is the shipped example).
_base_ = ['../_base_/models/lora.py', '../_base_/datasets/mllm_demo.py', '../_base_/schedules/cosine.py',
          '../_base_/default_runtime.py']

pretrained_model_name_or_path = 'Qwen/Qwen3-VL-8B-Instruct'
prompt_template = 'auto'  # the model's own ChatML template
freeze_projector = True  # as for Qwen2.5-VL: merger and DeepStack mergers keep their pretrained weights
max_length = 4096  # 32-pixel merged patches: a 1024 x 1024 image is 1,024 tokens
batch_size = 2  # per GPU; Qwen-VL rows are not packed (its 3-D positions are computed per row)
accumulative_counts = 8
lr = 1e-4
max_epochs = 3
