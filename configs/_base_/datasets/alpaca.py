_base_ = ['./sft.py']
data_path = 'alpaca'  # tatsu-lab/alpaca from the hub (needs the network the first time)
evaluation_inputs = ['Give three tips for staying healthy.']
evaluation_inputs_for = 'alpaca'  # asked only while data_path is 'alpaca'
