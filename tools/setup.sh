#!/usr/bin/env bash
# Create .venv with xtune and its dependencies (idempotent). torch goes first, pinned: a bare `torch`
# requirement would pull a multi-GB CUDA build onto CPU-only machines.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import xtune, torch, transformers, peft, mmengine, deepspeed, fastapi, uvicorn, openai, gradio, playwright" 2>/dev/null; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q "torch==${XTUNE_TORCH_VERSION:-2.13.0}"
  .venv/bin/python -m pip install -q -e ".[dev,deepspeed,serve,board]"
fi
# The browser tests of `xtune board` drive Debian's chromium (playwright's own download is not used).
if ! command -v chromium >/dev/null 2>&1; then
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  if command -v apt-get >/dev/null 2>&1; then
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
  else
    echo "tools/setup.sh: install chromium for tests/board (no apt-get here)" >&2
  fi
fi
