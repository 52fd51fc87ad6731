"""Models: the finetuning wrapper and its loss."""

from xtune.model.finetune import SupervisedFinetune

__all__ = ["SupervisedFinetune"]
