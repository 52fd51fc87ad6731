# Preference pairs (chosen/rejected after a shared prompt) for dpo, orpo, simpo and rm. data_format names the
# layout (alpaca, sharegpt, openai) or None to take it from the registry; "ranking": true entries are pairs.
data_path = 'preference_demo'
data_format = None
prompt_template = 'auto'
max_length = 2048  # per side; the prompt is never cut, replies lose tokens at the end (xtune/stages/data.py)
truncation = 'truncate'  # or 'drop' over-long pairs; both counted in the dataset statistics
batch_size = 1  # pairs per device
dataloader_num_workers = 0
evaluation_inputs = []
evaluation_inputs_for = None
evaluation_images = None
pack_to_max_length = False  # pairs are padded side by side, never packed
# validation loss is an sft/pt feature (ValidationHook refuses it for these stages)
val_data_path = None
val_size = 0.0
eval_steps = 0
save_best = False

train_dataset = dict(
    type='PreferenceDataset',
    data_path='${data_path}',
    data_format='${data_format}',
    tokenizer='${pretrained_model_name_or_path}',
    prompt_template='${prompt_template}',
    max_length='${max_length}',
    truncation='${truncation}',
    trust_remote_code='${trust_remote_code}',
)
train_dataloader = dict(
    batch_size='${batch_size}',
    num_workers='${dataloader_num_workers}',
    dataset='${train_dataset}',
    sampler=dict(type='DefaultSampler', shuffle=True),
    collate_fn=dict(type='xtune.pair_collate_fn'),
)
