# Qwen2.5-VL-7B-Instruct: every language-model weight and the merger trained, the vision tower frozen.
# Needs ZeRO-3 on 8 x 80 GB: xtune train ... --deepspeed zero3.
_base_ = ['../_base_/models/full.py', '../_base_/datasets/mllm_demo.py', '../_base_/schedules/cosine.py',
          '../_base_/default_runtime.py']

pretrained_model_name_or_path = 'Qwen/Qwen2.5-VL-7B-Instruct'
prompt_template = 'auto'  # the model's own ChatML template
gradient_checkpointing = True
max_length = 4096
batch_size = 2  # per GPU
accumulative_counts = 8
lr = 1e-5
max_epochs = 3
