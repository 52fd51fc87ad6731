"""Loading Hugging Face models and tokenizers: the one layer training, convert, chat, serve and board share.

Design:

- :mod:`xtune.hf.dtypes` names the dtypes (``auto``, ``bf16``, ``fp16``, ``fp32``) and resolves ``auto``
  and ``--device`` with one table: fp32 on the CPU, bf16 on a GPU that has it, else fp16 to run a model
  and fp32 to train one (fp16 weights cannot be trained with loss scaling). A bad value is one
  :class:`~xtune.errors.ConfigError` naming the knob and the allowed values. It imports torch only
  inside functions, so the CLI and config checks can use the names without loading torch.
- :mod:`xtune.hf.load` loads a model of one kind (``causal_lm``, or ``sequence_classification`` with one
  label for reward models) in a dtype, on a device, optionally quantised, and a tokenizer with the
  pad-token rule (no pad token: pad with the end-of-sequence token). Failures become one-line xtune
  errors naming the path; each caller says how to fix it in its own words.
- :mod:`xtune.hf.quantization` builds the bitsandbytes config for ``qlora`` training and ``--bits`` chat.

This package imports nothing from ``xtune.engine``, ``xtune.model``, ``xtune.stages``, ``xtune.dataset``
or the commands: they all build on it. Chat templates stay in :mod:`xtune.dataset.templates`, which
installs them on a tokenizer loaded here.
"""
