# Supervised data: one of the registered names in data/dataset_info.json, a file/directory, or a hub name.
data_path = 'alpaca_demo'
data_format = None  # alpaca | sharegpt | openai | text; None = from the dataset registry
prompt_template = 'auto'  # auto = the tokenizer's own chat template; or a built-in name (xtune.dataset.templates)
max_length = 2048
pack_to_max_length = True
batch_size = 1  # per device
dataloader_num_workers = 0
evaluation_inputs = []  # prompts answered during training (EvaluateChatHook)
objective = dict(type='sft')  # the training stage (xtune.stages): next-token loss on the trained tokens

train_dataset = dict(
    type='SFTDataset',
    data_path='${data_path}',
    data_format='${data_format}',
    tokenizer='${pretrained_model_name_or_path}',
    prompt_template='${prompt_template}',
    max_length='${max_length}',
    pack_to_max_length='${pack_to_max_length}',
    trust_remote_code='${trust_remote_code}',
)
train_dataloader = dict(
    batch_size='${batch_size}',
    num_workers='${dataloader_num_workers}',
    dataset='${train_dataset}',
    sampler=dict(type='DefaultSampler', shuffle=True),
    collate_fn=dict(type='xtune.sft_collate_fn')  # scoped: mmengine looks collate functions up at its root,
)
