# SimPO: length-normalised log-prob margin with a target gap; no reference model.
_base_ = ['../datasets/preference.py']
pref_beta = 0.1  # β (LLaMA-Factory's default; the SimPO paper tunes it in 2-10)
simpo_gamma = 0.5  # γ, the target reward margin
dpo_label_smoothing = 0.0
pref_ftx = 0.0
objective = dict(type='simpo', pref_beta='${pref_beta}', simpo_gamma='${simpo_gamma}',
                 dpo_label_smoothing='${dpo_label_smoothing}', pref_ftx='${pref_ftx}')
