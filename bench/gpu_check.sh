#!/usr/bin/env bash
# GPU checks for one H100 (or any CUDA GPU), run from the repository root:
#
#     bash bench/gpu_check.sh                       # parity on CUDA, fused vs fallback AdamATan2, bf16 throughput
#     BATCH=96 REPEATS=3 bash bench/gpu_check.sh    # smaller batch / fewer timed steps
#     PEAK_TFLOPS=989 bash bench/gpu_check.sh       # peak used for MFU (H100 SXM bf16 dense: 989; PCIe: 756)
#
# 1. tests/test_model_parity.py with TRM_TEST_DEVICE=cuda: every ACT step of the reference fixture in float32 on
#    the GPU (logits/q within 1e-4, loss within 1e-6 relative).
# 2. tests/test_optim.py -k fused: the adam-atan2 CUDA kernel against our PyTorch AdamATan2 (skips when the
#    package is not installed).
# 3. bench/bench_step.py on the seed model in bfloat16, eager and torch.compile, train and eval steps, with
#    TFLOP/s and MFU (matmul + attention FLOPs).
# Without CUDA every step still runs: the CUDA tests skip and the throughput step times the tiny model on CPU,
# so the script can be tried anywhere. Exit status: non-zero when a test fails.
set -uo pipefail

PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
BATCH=${BATCH:-192}          # the seed run's per-GPU batch: 768 over 4 GPUs
REPEATS=${REPEATS:-5}
PEAK_TFLOPS=${PEAK_TFLOPS:-989}
status=0

echo "== environment"
"$PY" - <<'EOF'
import importlib, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
for name in ("flash_attn_interface", "flash_attn", "adam_atan2_backend"):
    try:
        importlib.import_module(name)
        print(name, "importable")
    except ImportError as err:
        print(name, "not importable:", err)
EOF
HAS_CUDA=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))")

echo "== 1. parity with the reference fixtures on the device (float32)"
if [ "$HAS_CUDA" = 1 ]; then DEVICE=cuda; else DEVICE=cpu; echo "(no CUDA: parity on CPU)"; fi
TRM_TEST_DEVICE=$DEVICE "$PY" -m pytest -q -p no:cacheprovider tests/test_model_parity.py || status=1

echo "== 2. fused adam-atan2 kernel vs our AdamATan2"
if [ -f tests/test_optim.py ]; then
    "$PY" -m pytest -q -p no:cacheprovider -rs tests/test_optim.py -k fused
    rc=$?
    [ $rc = 0 ] || [ $rc = 5 ] || status=1   # 5: no test selected
else
    echo "tests/test_optim.py not found: skipped"
fi

echo "== 3. throughput, bfloat16, eager vs torch.compile"
if [ "$HAS_CUDA" = 1 ]; then
    "$PY" bench/bench_step.py --models seed --device cuda --dtype bfloat16 --batch "$BATCH" \
        --repeats "$REPEATS" --compile both --peak-tflops "$PEAK_TFLOPS" || status=1
else
    echo "(no CUDA: tiny model on CPU instead, eager only)"
    "$PY" bench/bench_step.py --models tiny --device cpu --dtype bfloat16 --batch 8 --repeats 2 || status=1
fi
exit $status
