#!/usr/bin/env bash
# The GPU checks of issue #4 as one prepared script, for a session that is lent the
# GPU machine (it runs in the repo root there; results go to $OUT, or ./gpu-check-out).
#
#   1. what the machine has: nvidia-smi, torch/jax CUDA builds, onnxruntime providers;
#   2. the CUDA-only tests (they skip on a CPU machine): torch (pinned copies on a side
#      stream, OOM halving, gpu:all, --batch-size auto), JAX on cuda, ONNX CUDA EP /
#      I/O binding / TensorRT when onnxruntime-gpu is there;
#   3. the backends benchmark on CUDA GPU 0 (host-to-device copies included; rows/s and
#      the share of time the GPU sat idle), small enough to fit the 15-minute budget.
#
# The machine reaches no package index: batchscore is installed without dependencies
# into the Python that has the CUDA builds. Each step has its own time limit so one
# hang cannot eat the budget; every step's log lands in $OUT.
set -u
OUT=${OUT:-./gpu-check-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
step() { echo "=== $1 ($(date -u +%H:%M:%S))" | tee -a "$OUT/summary.txt"; }

step "machine"
{
  nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv 2>&1
  python -V
  python - <<'EOF'
import importlib
for name in ("torch", "jax", "onnxruntime", "pyarrow", "polars", "typer", "rich", "tqdm", "numpy", "pytest", "hypothesis"):
    try:
        m = importlib.import_module(name)
        extra = ""
        if name == "torch":
            extra = f" cuda={m.version.cuda} available={m.cuda.is_available()} devices={m.cuda.device_count()}"
        if name == "jax":
            extra = f" devices={m.devices()}"
        if name == "onnxruntime":
            extra = f" providers={m.get_available_providers()}"
        print(f"{name} {getattr(m, '__version__', '?')}{extra}")
    except Exception as exc:  # noqa: BLE001
        print(f"{name} MISSING ({type(exc).__name__}: {exc})")
EOF
} 2>&1 | tee "$OUT/machine.txt"

step "install batchscore (no dependencies, no network)"
timeout 120 pip install --no-deps --no-build-isolation -e . > "$OUT/install.txt" 2>&1 \
  || timeout 120 pip install --no-deps -e . >> "$OUT/install.txt" 2>&1 \
  || echo "install failed: see install.txt; tests run from the source tree" | tee -a "$OUT/summary.txt"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

step "batchscore devices"
timeout 60 python -m batchscore devices 2>&1 | tee "$OUT/devices.txt"

step "CUDA tests"
timeout 300 python -m pytest -q -rs -p no:cacheprovider \
  tests/backends/test_torch.py tests/backends/test_jax.py tests/backends/test_onnx_gpu.py tests/test_runner.py \
  2>&1 | tee "$OUT/tests.txt" | tail -25
grep -E "passed|failed|error" "$OUT/tests.txt" | tail -1 >> "$OUT/summary.txt"

step "backends benchmark on the GPU"
ONLY=torch
python -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())" 2>/dev/null && ONLY=torch,onnx
timeout 330 python benchmarks/bench_backends.py --device gpu --rows 8192 --batch-size 1024 --repeat 3 \
  --quiet-wait 1 --only "$ONLY" --formats parquet,ipc 2>&1 | tee "$OUT/bench.txt" | tail -30
cp benchmarks/results/backends-gpu-*.md "$OUT/" 2>/dev/null || true
step "done"
