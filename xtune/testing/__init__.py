"""Helpers for testing xtune and code built on it: tiny random-init models of real architectures."""

from xtune.testing.tiny_models import TINY_ARCHS, make_tiny_model, tiny_config, tiny_tokenizer_dir

__all__ = ["TINY_ARCHS", "make_tiny_model", "tiny_config", "tiny_tokenizer_dir"]
