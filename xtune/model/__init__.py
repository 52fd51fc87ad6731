"""Models: the builder every stage uses (finetune types) and the token loss."""

from xtune.model.finetune import FinetuneModel, SupervisedFinetune

__all__ = ["FinetuneModel", "SupervisedFinetune"]
