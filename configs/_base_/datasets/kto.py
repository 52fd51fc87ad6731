# KTO: SFT rows (alpaca, sharegpt or openai layout) whose last reply is labelled by a boolean kto_tag column
# (true: desirable). Each prompt is also paired with the next row's reply for the KL estimate.
_base_ = ['./preference.py']
data_path = 'kto_demo'
train_dataset = dict(type='KTODataset')
train_dataloader = dict(collate_fn=dict(type='xtune.kto_collate_fn'))
