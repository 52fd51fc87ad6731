# InternLM2.5-7B-Chat: QLoRA (4-bit NF4 base + LoRA adapters; needs a CUDA GPU with bitsandbytes),
# on the shipped self-cognition data, answering with your name and author.
_base_ = ['../_base_/models/qlora.py', '../_base_/datasets/identity.py', '../_base_/schedules/cosine.py',
          '../_base_/default_runtime.py']

pretrained_model_name_or_path = 'internlm/internlm2_5-7b-chat'
prompt_template = 'internlm2'
trust_remote_code = True  # InternLM2.5's modeling code lives in its Hub repository: read it before running
# InternLM2's fused attention (wqkv, wo) and MLP (w1, w2, w3) layers; the output head stays frozen
model = dict(lora=dict(target_modules=['wqkv', 'wo', 'w1', 'w2', 'w3']))
name = 'XTuneBot'  # who the model will say it is: fills {{name}} and {{author}} in data/identity.json
author = 'the xtune team'
max_length = 512  # the questions and answers are a few dozen tokens
pack_to_max_length = False  # 66 short rows, 4 per step: ~50 optimizer steps over 3 epochs
batch_size = 4
accumulative_counts = 1
lr = 2e-4  # r=64/alpha=16 LoRA (QLoRA paper, XTuner defaults for 7B-class models)
max_epochs = 3
