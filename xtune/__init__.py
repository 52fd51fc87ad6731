"""xtune: config-driven fine-tuning of open LLMs on the mmengine Runner."""

__version__ = "0.1.0"
