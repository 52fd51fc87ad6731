# Mistral-7B-Instruct-v0.3: QLoRA on LongAlpaca-12k with rows of 32k tokens (its full context).
# See README "Long sequences".
# One GPU: gradient checkpointing, with activation_offload=True when the checkpointed activations do not fit.
# Several GPUs: sequence_parallel_size=N splits every row over N of them (NPROC_PER_NODE a multiple of N).
_base_ = ['./mistral_7b_instruct_v0_3_qlora_alpaca_e3.py']

data_path = 'longalpaca'
max_length = 32768
batch_size = 1  # per data-parallel group: one 32k row
accumulative_counts = 8  # 8 rows of 32k: ~256k tokens per optimizer step
max_epochs = 1
gradient_checkpointing = True  # a 32k row's activations are ~100 GiB without it
evaluation_inputs = []  # LongAlpaca asks about long documents: no short prompt stands for its data
