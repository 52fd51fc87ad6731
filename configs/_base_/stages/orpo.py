# ORPO: SFT on the chosen reply + λ x odds-ratio loss; no reference model.
_base_ = ['../datasets/preference.py']
pref_beta = 0.1  # λ, the weight of the odds-ratio term
objective = dict(type='orpo', pref_beta='${pref_beta}')
