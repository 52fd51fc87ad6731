# ShareGPT conversations: multi-turn, with function calls, observations and a tools column. The shipped demo
# has 30 conversations; set data_path to your own .json/.jsonl file (or a name in data/dataset_info.json).
# Tool calls need a template that writes tools (qwen2_5, qwen3, llama3).
_base_ = ['./sft.py']
data_path = 'sharegpt_demo'
data_format = 'sharegpt'  # stated, so that a file of yours is read as ShareGPT too
evaluation_inputs = ['What can you help me with?']
evaluation_inputs_for = 'sharegpt_demo'  # asked only while data_path is 'sharegpt_demo'
