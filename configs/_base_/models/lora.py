_base_ = ['./base.py']
# r=64/alpha=16 on every linear layer: XTuner's and QLoRA paper's defaults for 7B-class models
model = dict(finetune_type='lora',
             lora=dict(r=64, lora_alpha=16, lora_dropout=0.1, target_modules='all-linear', modules_to_save=None))
