# DPO against the initial model (reference log-probs precomputed once, kept in checkpoints).
_base_ = ['../datasets/preference.py']
pref_beta = 0.1  # β: how far the policy may move from the reference
pref_loss = 'sigmoid'  # sigmoid (DPO) | hinge (SLiC) | ipo
dpo_label_smoothing = 0.0  # cDPO's ε for noisy preferences (sigmoid only)
pref_ftx = 0.0  # weight of an added SFT loss on the chosen reply
objective = dict(type='dpo', pref_beta='${pref_beta}', pref_loss='${pref_loss}',
                 dpo_label_smoothing='${dpo_label_smoothing}', pref_ftx='${pref_ftx}')
