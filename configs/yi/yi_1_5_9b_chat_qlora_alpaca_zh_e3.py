# Yi-1.5-9B-Chat: yi_1_5_9b_chat_qlora_alpaca_e3,
# on Alpaca-GPT4 in Chinese (~49k instructions, from the Hugging Face Hub).
_base_ = ['./yi_1_5_9b_chat_qlora_alpaca_e3.py']

data_path = 'alpaca_zh'
evaluation_inputs = ['请给出三条保持健康的建议。']
evaluation_inputs_for = 'alpaca_zh'
