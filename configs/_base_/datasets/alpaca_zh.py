# Chinese Alpaca: the Alpaca instructions answered by GPT-4 in Chinese (~49k rows, from the Hugging Face Hub;
# needs the network the first time).
_base_ = ['./sft.py']
data_path = 'alpaca_zh'
evaluation_inputs = ['请给出三条保持健康的建议。']
evaluation_inputs_for = 'alpaca_zh'  # asked only while data_path is 'alpaca_zh'
