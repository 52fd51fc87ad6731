# KTO against the initial model: desirable and undesirable completions, KL from mismatched completions.
_base_ = ['../datasets/kto.py']
pref_beta = 0.1
kto_chosen_weight = 1.0  # weight of desirable completions (TRL: desirable_weight)
kto_rejected_weight = 1.0  # weight of undesirable completions (TRL: undesirable_weight)
objective = dict(type='kto', pref_beta='${pref_beta}', kto_chosen_weight='${kto_chosen_weight}',
                 kto_rejected_weight='${kto_rejected_weight}')
