# InternLM2.5-1.8B-Chat: full fine-tuning (every weight trains),
# on Stanford Alpaca (52k English instructions, from the Hugging Face Hub).
_base_ = ['../_base_/models/full.py', '../_base_/datasets/alpaca.py', '../_base_/schedules/cosine.py',
          '../_base_/default_runtime.py']

pretrained_model_name_or_path = 'internlm/internlm2_5-1_8b-chat'
prompt_template = 'internlm2'
trust_remote_code = True  # InternLM2.5's modeling code lives in its Hub repository: read it before running
max_length = 2048
# The Hub code masks by padding alone (positions only feed RoPE): packed samples would see each other, and
# the model build refuses that (xtune/model/attention.py). One sample a row instead.
pack_to_max_length = False
batch_size = 4  # per GPU, padded to the longest of the four
accumulative_counts = 4  # 16 samples per optimizer step
lr = 2e-5  # every weight moves: about 10x smaller steps than LoRA
max_epochs = 3
