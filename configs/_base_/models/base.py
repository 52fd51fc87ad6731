# The causal LM to fine-tune. Leaf configs set pretrained_model_name_or_path (and usually prompt_template).
pretrained_model_name_or_path = None
dtype = 'auto'  # auto = bf16 on GPUs that support it, fp32 on CPU
trust_remote_code = False  # only configs of models that need their repository's code set this
gradient_checkpointing = 'auto'  # auto = on for models over 1B parameters

model = dict(
    type='SupervisedFinetune',
    pretrained_model_name_or_path='${pretrained_model_name_or_path}',
    dtype='${dtype}',
    gradient_checkpointing='${gradient_checkpointing}',
    trust_remote_code='${trust_remote_code}',
)
