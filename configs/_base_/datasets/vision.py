# Image-text conversations (docs/multimodal.md): LLaVA JSON (image + conversations) or LLaMA-Factory's layout
# (messages + images). <image> marks where each image goes; its tokens are never trained.
_base_ = ['./sft.py']
data_path = 'mllm_demo'
image_folder = None  # image paths are relative to it; None: to the registry's (or data file's) folder
pack_to_max_length = False  # LLaVA rows may pack (True); Qwen-VL's 3-D positions refuse it
train_dataset = dict(type='VisionSFTDataset', vision_tower='${vision_tower}', image_folder='${image_folder}')
train_dataloader = dict(collate_fn=dict(type='xtune.vision_collate_fn'))
