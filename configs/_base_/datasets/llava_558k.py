# LLaVA-Pretrain (558k image-caption pairs from LAION/CC/SBU), for the projector pretrain stage. Download
# liuhaotian/LLaVA-Pretrain from the Hugging Face Hub into ./data/llava_data/LLaVA-Pretrain (unzip images.zip).
_base_ = ['./vision.py']
data_path = './data/llava_data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json'
image_folder = './data/llava_data/LLaVA-Pretrain/images'
data_format = 'sharegpt'
max_length = 2048
