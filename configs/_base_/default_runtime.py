# Runtime shared by every config: runner, hooks, logging, checkpoints, randomness.
default_scope = 'xtune'
runner_type = 'XtuneRunner'

save_steps = 500  # optimizer steps between checkpoints
save_total_limit = 2  # checkpoints kept (-1: all)
log_interval = 10  # iterations between log lines
save_hf_at_end = False  # also write WORK_DIR/hf (HF model or PEFT adapter) when training ends
seed = 42  # fixed by default so that a resumed run shuffles exactly as the original did
evaluation_freq = 0  # iterations between those answers; 0 = only at the end

default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    # also logs the first and last iteration; a progress bar on an interactive terminal (progress_bar='auto')
    logger=dict(type='XtuneLoggerHook', interval='${log_interval}', log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    # interval is in iterations (micro-batches): save_steps optimizer steps of accumulative_counts each
    checkpoint=dict(type='AtomicCheckpointHook', by_epoch=False, interval='${save_steps * accumulative_counts}',
                    max_keep_ckpts='${save_total_limit}'),
    sampler_seed=dict(type='DistSamplerSeedHook'),
)
custom_hooks = [
    dict(type='DatasetInfoHook'),
    dict(type='ThroughputHook'),
    dict(type='RNGStateHook'),
    dict(type='ReferenceLogpsHook'),  # DPO/KTO: the initial model's log-probs, kept in checkpoints
    dict(type='LossCurveHook'),
    dict(type='EvaluateChatHook', evaluation_inputs='${evaluation_inputs}', every_n_iters='${evaluation_freq}',
         inputs_for='${evaluation_inputs_for}', data_path='${data_path}', evaluation_images='${evaluation_images}'),
    dict(type='SaveHFHook', enabled='${save_hf_at_end}'),
    dict(type='ValidationHook', val_data_path='${val_data_path}', val_size='${val_size}', eval_steps='${eval_steps}',
         save_best='${save_best}', batch_size='${batch_size}'),
]
env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
               dist_cfg=dict(backend='nccl'))
report_to = 'tensorboard'  # trackers beside scalars.json: tensorboard, wandb, mlflow, swanlab (comma-separated), 'none'
visualizer = dict(type='TrackerVisualizer', report_to='${report_to}')
log_processor = dict(by_epoch=False, window_size=1)
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed='${seed}', deterministic=False)
