# GLM-4-9B-Chat: LoRA adapters on every linear layer,
# on Stanford Alpaca (52k English instructions, from the Hugging Face Hub).
_base_ = ['../_base_/models/lora.py', '../_base_/datasets/alpaca.py', '../_base_/schedules/cosine.py',
          '../_base_/default_runtime.py']

pretrained_model_name_or_path = 'THUDM/glm-4-9b-chat'
prompt_template = 'glm4'
trust_remote_code = True  # glm-4-9b-chat's ChatGLM code lives in its Hub repository: read it before running
# ChatGLM's attention and MLP layers; its output_layer stays frozen
model = dict(lora=dict(target_modules=['query_key_value', 'dense', 'dense_h_to_4h', 'dense_4h_to_h']))
max_length = 2048
# The Hub code masks by padding alone (positions only feed RoPE): packed samples would see each other, and
# the model build refuses that (xtune/model/attention.py). One sample a row instead.
pack_to_max_length = False
batch_size = 4  # per GPU, padded to the longest of the four
accumulative_counts = 4  # 16 samples per optimizer step
lr = 2e-4  # r=64/alpha=16 LoRA (QLoRA paper, XTuner defaults for 7B-class models)
max_epochs = 3
