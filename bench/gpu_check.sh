#!/usr/bin/env bash
# The first run on a CUDA machine, in a few minutes: what the GPU sees, the tests marked `gpu` (training step in
# bf16 and fp16 with loss scalers, DeepSpeed ZeRO 1/2, deterministic CUDA training, evaluation on 1 and 2 GPUs,
# colorization), then the training benchmark at 256x256 with torch.compile (bench/train.py: images/s of every
# variant, peak GPU memory, model FLOP utilization, compile time). Prints ONE JSON line at the end, holding the
# benchmark's own line whole under "train" (so no key list here can fall behind it).
#
#     bash bench/gpu_check.sh                 # PYTHON=... to choose the interpreter; LOG=... for the full log
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
LOG=${LOG:-$(mktemp -t cmgan-gpu-check.XXXXXX.log)}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

device=$("$PY" - <<'PYEOF'
import json, sys
import torch
from cmgan.distenv import cuda_unavailable_reason
if not torch.cuda.is_available():
    sys.exit(f"gpu_check: no usable GPU: {cuda_unavailable_reason()} (see docs/gpu.md)")
props = torch.cuda.get_device_properties(0)
print(json.dumps({"gpu": props.name, "gpus": torch.cuda.device_count(),
                  "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
                  "memory_gib": round(props.total_memory / 2**30, 1), "torch": torch.__version__,
                  "cuda": torch.version.cuda}))
PYEOF
) || exit 1
echo "device: $device" | tee "$LOG"

start=$(date +%s)
"$PY" -m pytest -m gpu -q -rs -p no:cacheprovider tests/ >>"$LOG" 2>&1
tests_rc=$?
tests_line=$(grep -E "^[0-9]+ (passed|failed)|^(=+ )?[0-9]+ (passed|failed|skipped)" "$LOG" | tail -1)
echo "gpu tests (rc $tests_rc, $(( $(date +%s) - start )) s): $tests_line"

start=$(date +%s)
bench=$("$PY" bench/train.py --size 256 --batch 4 --rounds 3 --warmup 2 --compile --memory-batches '' 2>>"$LOG" | tail -1)
bench_rc=$?
echo "$bench" >>"$LOG"
echo "train benchmark (rc $bench_rc, $(( $(date +%s) - start )) s)"

"$PY" - "$device" "$bench" "$tests_rc" "$tests_line" "$LOG" <<'PYEOF'
import json, sys
device, bench, tests_rc, tests_line, log = sys.argv[1:]
try:
    b = json.loads(bench)
except ValueError:
    b = {}
print(json.dumps({"bench": "gpu_check", **json.loads(device), "gpu_tests_rc": int(tests_rc),
                  "gpu_tests": tests_line, "train": b, "log": log}))
PYEOF
[ "$tests_rc" -eq 0 ] && [ -n "$bench" ]
