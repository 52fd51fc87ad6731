# OpenAI chat messages: system/user/assistant turns, assistant tool_calls and tool results, a tools column.
# The shipped demo has 31 conversations; set data_path to your own .jsonl file (or a registered name).
# Tool calls need a template that writes tools (qwen2_5, qwen3, llama3).
_base_ = ['./sft.py']
data_path = 'openai_demo'
data_format = 'openai'  # stated, so that a file of yours is read as OpenAI messages too
evaluation_inputs = ['What can you help me with?']
evaluation_inputs_for = 'openai_demo'  # asked only while data_path is 'openai_demo'
