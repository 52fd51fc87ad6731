# Schedule and runtime shared by the 7-8B preference/reward-stage leaves (dpo, kto, orpo, simpo, rm): one epoch,
# 10% warmup. From the bases, unchanged: max_length 2048 per side of a pair, batch_size 1 pair per GPU
# (datasets/preference.py), accumulative_counts 16, i.e. 16 pairs per optimizer step (schedules/cosine.py).
# The model, prompt template, data and lr stay in each leaf: mmengine refuses a key set by two sibling bases,
# and those keys already come from models/*.py and stages/*.py.
_base_ = ['../schedules/cosine.py', '../default_runtime.py']
max_epochs = 1
warmup_ratio = 0.1
