# Reward model: a scalar head (AutoModelForSequenceClassification, num_labels=1) trained on preference pairs.
_base_ = ['../datasets/preference.py']
objective = dict(type='rm')
