# Schedule and runtime shared by the CPU demos of the preference/reward stages on the shipped tiny_llama:
# one pair per optimizer step, no warmup, 3 epochs (schedules/cosine.py), a checkpoint every 50 steps.
_base_ = ['../schedules/cosine.py', '../default_runtime.py']
accumulative_counts = 1
warmup_ratio = 0.0
save_steps = 50
