# LLaVA-1.5's instruction mix (665k conversations: COCO, GQA, OCR-VQA, TextVQA, VisualGenome, and text-only
# ShareGPT rows). liuhaotian/LLaVA-Instruct-150K's llava_v1_5_mix665k.json, images under ./data/llava_data/llava_images.
_base_ = ['./vision.py']
data_path = './data/llava_data/LLaVA-Instruct-150K/llava_v1_5_mix665k.json'
image_folder = './data/llava_data/llava_images'
data_format = 'sharegpt'
max_length = 2048
