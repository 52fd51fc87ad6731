"""Tiny stand-ins for models that run their own code (``trust_remote_code``), like InternLM2.5 and GLM-4.

Their Hub repositories ship modelling files that transformers imports from the model folder (the
``auto_map`` of ``config.json``); xtune cannot know what that code does with packed rows. InternLM2's
and ChatGLM's build their causal mask from the padding mask alone and use ``position_ids`` only for
rotary embeddings, so packed samples attend to each other. The stand-ins here are tiny Llamas loaded
through the same remote-code route: ``leaky`` masks like those models; otherwise it keeps
transformers' own masking (positions restart -> block-diagonal mask).
"""

import json
from pathlib import Path

from xtune.testing.tiny_models import make_tiny_model

_MODELING = '''"""A remote-code stand-in written by xtune.testing.remote_code."""
import torch
from transformers import LlamaForCausalLM, LlamaModel

LEAKY = {leaky}


class StandInModel(LlamaModel):
    def forward(self, input_ids=None, attention_mask=None, position_ids=None, **kwargs):
        if LEAKY and attention_mask is None and input_ids is not None:
            # a causal mask from the padding mask alone, positions for RoPE only (InternLM2, ChatGLM)
            attention_mask = torch.ones_like(input_ids)
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs)


class StandInForCausalLM(LlamaForCausalLM):
    def __init__(self, config):
        super().__init__(config)
        self.model = StandInModel(config)
        self.post_init()
'''


def make_remote_code_model(path: str | Path, *, leaky: bool, seed: int = 0) -> Path:
    """Write a tiny Llama whose class comes from a modelling file in the folder (load it with
    ``trust_remote_code=True``); ``leaky`` makes packed samples attend to each other."""
    path = make_tiny_model("llama", path, seed=seed)
    (path / "modeling_standin.py").write_text(_MODELING.format(leaky=leaky))
    config = json.loads((path / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_standin.StandInForCausalLM"}
    (path / "config.json").write_text(json.dumps(config, indent=2))
    return path
