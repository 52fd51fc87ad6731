"""The optimizer constructor: Adam(W) fused unless told otherwise, other optimizers untouched."""

import torch

from xtune.engine.optim import FusedAdamConstructor


def _build(optimizer: dict):
    model = torch.nn.Linear(3, 2)
    return FusedAdamConstructor({"type": "OptimWrapper", "optimizer": optimizer})(model).optimizer


def test_adam_and_adamw_are_fused_unless_the_config_says_otherwise():
    assert _build({"type": "AdamW", "lr": 0.1}).param_groups[0]["fused"] is True
    assert _build({"type": "Adam", "lr": 0.1}).param_groups[0]["fused"] is True
    assert not _build({"type": "AdamW", "lr": 0.1, "fused": False}).param_groups[0]["fused"]


def test_an_optimizer_without_a_fused_form_is_built_as_configured():
    optimizer = _build({"type": "RMSprop", "lr": 0.1, "alpha": 0.9})
    assert isinstance(optimizer, torch.optim.RMSprop) and optimizer.param_groups[0]["alpha"] == 0.9
    assert "fused" not in optimizer.param_groups[0]
