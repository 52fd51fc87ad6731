"""The training stages the board offers: one table, so that a new stage is one more entry.

A stage names the ``_base_`` dataset config it trains with (under ``configs/_base_/``) and the data
formats that fit it; the board writes a config from those bases when no shipped config is chosen.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    """A training stage.

    Attributes:
        name: The stage's short name (``sft``, ``pt``, ...).
        label: What the page shows.
        dataset_base: The ``_base_`` config (relative to ``configs/_base_/``) holding its data pipeline.
        formats: Data formats the stage trains on.
        default_data: A registered dataset to start from.
    """

    name: str
    label: str
    dataset_base: str
    formats: tuple[str, ...]
    default_data: str


STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in (
        Stage("sft", "sft: supervised fine-tuning", "datasets/sft.py", ("alpaca", "sharegpt", "openai"), "alpaca_demo"),
        Stage("pt", "pt: continued pretraining", "datasets/pretrain.py", ("text",), "pretrain_demo"),
    )
}
