#!/usr/bin/env bash
# The GPU check, as one prepared run for a machine with a CUDA GPU (e.g. a short loan of an H100/H200):
#   1. the tests marked gpu (the CUDA path equals the CPU within stated tolerances),
#   2. a smoke training run of every method on the GPU,
#   3. the engine benchmark on the GPU (bench/results/engine-cuda.json),
#   4. one small Table-1 run on the CPU and on the GPU, whose metrics must agree within 0.02.
# Usage: bash bench/gpu.sh   (OUT=folder for logs and results; default bench/out/gpu)
# Without CUDA it stops at once with exit status 3 and says so (tests/test_bench_scripts.py checks that).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x "${VENV:-.venv}/bin/python" ]; then . "${VENV:-.venv}/bin/activate"; fi
OUT="${OUT:-bench/out/gpu}"
if ! python -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "bench/gpu.sh: torch $(python -c 'import torch; print(torch.__version__)') sees no CUDA GPU; run this on a" \
       "machine with one (nothing was measured)" >&2
  exit 3
fi
mkdir -p "$OUT"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
python -c 'import torch; print("[gpu]", torch.__version__, torch.cuda.get_device_name(0))' | tee "$OUT/device.txt"

echo "[gpu] 1/4 tests marked gpu"
python -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider

echo "[gpu] 2/4 a smoke run of every method on the GPU"
for method in $(python -c 'from mamo_lite.methods import METHODS; print(" ".join(METHODS))'); do
  python -m mamo_lite train --method "$method" --dataset synthetic --preset smoke --device cuda \
    --out "$OUT/runs/$method" --overwrite --no-progress > "$OUT/train-$method.log"
  tail -n 3 "$OUT/train-$method.log"
done
for method in maml mamo; do  # and on the faster equivalent paths (the batched path on the GPU)
  python -m mamo_lite train --method "$method" --dataset synthetic --preset smoke --device cuda --fast-paths \
    --out "$OUT/runs/$method-fast" --overwrite --no-progress > "$OUT/train-$method-fast.log"
  tail -n 3 "$OUT/train-$method-fast.log"
done

echo "[gpu] 3/4 engine benchmark on the GPU"
python bench/bench_engine.py --devices cuda --batched off,on --out bench/results/engine-{device}.json

echo "[gpu] 4/4 the same small Table-1 run on the CPU and on the GPU"
rows=("global median" "MAML" "MAMO" "DNN")
python -m mamo_lite reproduce table1 --datasets synthetic --seeds 1 --budget smoke --rows "${rows[@]}" \
  --device cpu --out "$OUT/table1-cpu" --no-progress > /dev/null
python -m mamo_lite reproduce table1 --datasets synthetic --seeds 1 --budget smoke --rows "${rows[@]}" \
  --device cuda --out "$OUT/table1-cuda" --no-progress > /dev/null
python - "$OUT" <<'PY'
import sys
import pandas as pd
out = sys.argv[1]
cpu, gpu = (pd.read_csv(f"{out}/table1-{d}/table1.csv") for d in ("cpu", "cuda"))
keys = ["method", "dataset", "scenario", "metric", "seed"]
both = cpu.merge(gpu, on=keys, suffixes=("_cpu", "_cuda"))
both["diff"] = (both["value_cpu"] - both["value_cuda"]).abs()
print(both.groupby("method")["diff"].max().rename("max |CPU − CUDA|").to_string())
worst = both["diff"].max()
sys.exit(0 if worst <= 0.02 else f"CPU and CUDA metrics differ by {worst:.4f} > 0.02")
PY
echo "[gpu] done: results in $OUT and bench/results/engine-cuda.json"
