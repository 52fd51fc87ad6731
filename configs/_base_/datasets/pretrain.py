# Continued pretraining on plain text: every token trains, an EOS ends each document, documents are packed.
# The shipped demo is a few hundred lines; set data_path to your .txt files (one document per line), a folder
# of them, or .jsonl with a "text" field.
_base_ = ['./sft.py']
data_path = 'pretrain_demo'
data_format = 'text'
pack_to_max_length = True
objective = dict(type='pt')
evaluation_inputs = []  # a base model does not answer chat prompts
