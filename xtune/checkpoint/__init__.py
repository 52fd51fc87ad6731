"""Checkpoint files on disk. ``xtune.checkpoint.files`` is light (no torch, no mmengine): the board and
the CLI read the ``last_checkpoint`` pointer through it without importing the training engine."""
