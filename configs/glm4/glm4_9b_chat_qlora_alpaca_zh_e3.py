# GLM-4-9B-Chat: glm4_9b_chat_qlora_alpaca_e3 on Alpaca-GPT4 in Chinese (~49k instructions, from the Hugging Face Hub).
_base_ = ['./glm4_9b_chat_qlora_alpaca_e3.py']

data_path = 'alpaca_zh'
evaluation_inputs = ['请给出三条保持健康的建议。']
evaluation_inputs_for = 'alpaca_zh'
trust_remote_code = True  # the model's own code from its Hub repository, as in the base config
