# AdamW, linear warmup for warmup_ratio of training, then cosine decay to 0.
lr = 2e-4
betas = (0.9, 0.999)
weight_decay = 0.0
max_norm = 1.0  # gradient clipping; None turns it off
accumulative_counts = 16  # micro-batches per optimizer step
max_epochs = 3
warmup_ratio = 0.03

optim_wrapper = dict(
    type='DtypeOptimWrapper',
    dtype='${dtype}',
    optimizer=dict(type='AdamW', lr='${lr}', betas='${betas}', weight_decay='${weight_decay}'),
    constructor='FusedAdamConstructor',  # Adam(W) fused: one kernel for the update, the same numbers
    clip_grad=dict(max_norm='${max_norm}', error_if_nonfinite=False),
    accumulative_counts='${accumulative_counts}',
)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-5, by_epoch=True, begin=0, end='${warmup_ratio * max_epochs}',
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=0.0, by_epoch=True, begin='${warmup_ratio * max_epochs}',
         end='${max_epochs}', convert_to_iter_based=True),
]
train_cfg = dict(type='TrainLoop', max_epochs='${max_epochs}', sequence_parallel_size='${sequence_parallel_size}')
