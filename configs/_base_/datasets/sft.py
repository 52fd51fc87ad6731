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
evaluation_inputs_for = None  # the data_path those prompts are for: other data skips them (None: always asked)
evaluation_images = None  # vision runs: image file(s) the prompts are asked about (one for all, or one per prompt)
# Fill {{name}} and {{author}} in the data (identity data: "I am {{name}}, made by {{author}}"). Left unset,
# text that holds them is an error, so they are never trained literally.
name = None
author = None
# Validation loss: on val_data_path (any data_path form) or a held-out val_size share of the data, every
# eval_steps optimizer steps (0: at the end only); save_best keeps WORK_DIR/best_checkpoint.pth.
val_data_path = None
val_size = 0.0
eval_steps = 0
save_best = False
skip_bad_rows = False  # True: leave malformed rows out (counted, with reasons, in the dataset statistics)

train_dataset = dict(
    type='SFTDataset',
    data_path='${data_path}',
    data_format='${data_format}',
    tokenizer='${pretrained_model_name_or_path}',
    prompt_template='${prompt_template}',
    max_length='${max_length}',
    pack_to_max_length='${pack_to_max_length}',
    trust_remote_code='${trust_remote_code}',
    placeholders=dict(name='${name}', author='${author}'),
    skip_bad_rows='${skip_bad_rows}',
    val_size='${val_size}',
)
train_dataloader = dict(
    batch_size='${batch_size}',
    num_workers='${dataloader_num_workers}',
    dataset='${train_dataset}',
    sampler=dict(type='DefaultSampler', shuffle=True),
    collate_fn=dict(type='xtune.sft_collate_fn')  # scoped: mmengine looks collate functions up at its root,
)
