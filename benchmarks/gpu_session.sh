#!/usr/bin/env bash
# Issue 15's GPU measurements in one device call: about 8 minutes on an H200, within one `run` (600 s).
#
#   1. Parity (benchmarks/switch_parity.py): every speed switch keeps loss and gradients in bf16 and fp32
#      on CUDA; the first run of xtune_varlen's varlen_attn kernel, FlexAttention's backward, fused AdamW
#      and compiled layers on a GPU.
#   2. Speed (benchmarks/train_speed.py): the 1.5B shape, LoRA r16, rows of 2048, 8192 tokens a step:
#      xtune with its defaults, hf_padded, hf_full_rows, then xtune with each speed switch flipped.
#      Results are written after every case, so a run cut short keeps what it measured.
#
# On this machine first (once per checkout): ../shared/gpu/wheels.sh --no-bnb   (mmengine, datasets,
# deepspeed wheels into .whl/). Then the device tool: run(command="bash benchmarks/gpu_session.sh",
# carry=[".whl"], timeout_s=600), and give_back. Results: $OUT/parity.{json,log}, $OUT/speed.{json,log}.
#
# XTUNE_GPU_SESSION_SMOKE=1 runs the same steps on the CPU with the tiny shape, in seconds: the plumbing
# check that tests/test_benchmarks.py runs.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
SMOKE=${XTUNE_GPU_SESSION_SMOKE:-0}
if [[ $SMOKE != 1 && -d .whl ]]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "gpu_session: installing .whl/ failed" >&2; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
PYTHON=${PYTHON:-python3}
$PYTHON -c "import mmengine, datasets, peft, transformers, torch; print('torch', torch.__version__, \
'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())" \
  || { echo "gpu_session: a dependency is missing; run ../shared/gpu/wheels.sh here and carry .whl" >&2; exit 1; }

if [[ $SMOKE == 1 ]]; then
  parity=(--device cpu --dtypes fp32 --switches varlen)
  speed=(--shape tiny --device cpu --impls xtune --seq-lens 128 --tokens-per-step 256 --steps 1 --warmup 1
         --cache "$OUT/cache")
  limits=(120 300)
else
  parity=(--device cuda --dtypes bf16,fp32)
  speed=(--shape 1.5b --modes lora --seq-lens 2048 --steps 10 --warmup 2 --switches --cache /tmp/xtune_bench)
  limits=(150 330)
fi

status=0
timeout "${limits[0]}" $PYTHON benchmarks/switch_parity.py "${parity[@]}" --out "$OUT/parity.json" 2>&1 \
  | tee "$OUT/parity.log" || status=1
timeout "${limits[1]}" $PYTHON benchmarks/train_speed.py "${speed[@]}" --out "$OUT/speed.json" >"$OUT/speed.log" 2>&1 \
  || status=1
# the table (or, cut short, the cases measured so far) last, where the device tool's output tail shows it
grep -E "^\[[0-9]+\] |vs padded|^(lora|full|qlora) " "$OUT/speed.log" | tail -40
echo "gpu_session: parity and speed logs in $OUT (status $status)"
exit $status
