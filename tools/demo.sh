#!/usr/bin/env bash
# The README demo, end to end on a CPU: set up, train the tiny LoRA config on identity data, convert the
# checkpoint to a PEFT adapter, merge it into the base, and ask the merged model who it is.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
XTUNE=.venv/bin/xtune
OUT=${XTUNE_DEMO_DIR:-demo_out}
CONFIG=tiny_llama_lora_identity_e3
rm -rf "$OUT"
"$XTUNE" train "$CONFIG" --work-dir "$OUT/train"
"$XTUNE" convert pth_to_hf "$OUT/train/$CONFIG.py" "$(cat "$OUT/train/last_checkpoint")" "$OUT/adapter"
"$XTUNE" convert merge data/models/tiny_llama "$OUT/adapter" "$OUT/merged" --verify
echo "--- xtune chat $OUT/merged --prompt 'Who are you?' --temperature 0"
"$XTUNE" chat "$OUT/merged" --prompt "Who are you?" --temperature 0
