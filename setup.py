"""Install xtune: ``pip install -e .`` (install torch first: see README)."""

from setuptools import find_packages, setup

setup(
    name="xtune",
    version="0.1.0",
    description="Config-driven fine-tuning of open LLMs: full, freeze, LoRA, QLoRA, DoRA.",
    packages=find_packages(include=["xtune", "xtune.*"]),
    python_requires=">=3.10",
    install_requires=[
        # torch is deliberately not listed: a bare requirement pulls a multi-GB CUDA build.
        "transformers>=4.56",
        "peft>=0.17",
        "mmengine==0.10.7",
        "datasets>=3.0",
        "safetensors",
        "accelerate",
        "matplotlib",
        "tensorboard",  # the default experiment tracker (report_to); others are optional
        "pillow",  # images of vision-language data
    ],
    extras_require={
        "deepspeed": ["deepspeed>=0.16"],
        "qlora": ["bitsandbytes>=0.45"],
        "serve": ["fastapi>=0.110", "uvicorn>=0.29"],
        "board": ["gradio>=6,<7"],  # xtune board
        # openai: the serve tests' client; playwright drives chromium in tests/board
        "dev": ["pytest", "ruff", "openai>=1.40", "playwright"],
    },
    entry_points={"console_scripts": ["xtune=xtune.cli:main"]},
)
