# The shipped image demo in LLaMA-Factory's layout (data/mllm_demo.json): colour and shape questions about 12
# generated images, two-image comparisons and text-only rows. Swap in your own data with the same layout.
_base_ = ['./vision.py']
data_path = 'mllm_demo'
evaluation_inputs = []  # answers during training need an image: try the model with `xtune chat --image`
