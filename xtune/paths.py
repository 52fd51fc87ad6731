"""Where xtune finds its shipped configs, data and demo models."""

import os
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent
# xtune is installed editable (``pip install -e .``): configs/ and data/ sit next to the package.
REPO_ROOT = PACKAGE_ROOT.parent
CONFIG_DIR = Path(os.environ.get("XTUNE_CONFIG_DIR", REPO_ROOT / "configs"))
DATA_DIR = Path(os.environ.get("XTUNE_DATA_DIR", REPO_ROOT / "data"))
MODEL_DIR = DATA_DIR / "models"
DATASET_INFO = DATA_DIR / "dataset_info.json"
