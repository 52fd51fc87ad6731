# Self-cognition data: {{name}} and {{author}} in data/identity.json are filled from these knobs.
_base_ = ['./sft.py']
data_path = 'identity'
name = 'xtune'
author = 'the xtune team'
evaluation_inputs = ['Who are you?', '你是谁？']
evaluation_inputs_for = 'identity'  # asked only while data_path is 'identity'
