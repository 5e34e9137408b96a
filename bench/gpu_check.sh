#!/usr/bin/env bash
# GPU checks for one H100 (or any CUDA GPU), run from the repository root:
#
#     bash bench/gpu_check.sh                       # everything below, ~6 min on an H100
#     BATCH=96 REPEATS=3 bash bench/gpu_check.sh    # smaller batch / fewer timed steps
#     PEAK_TFLOPS=989 bash bench/gpu_check.sh       # peak used for MFU (H100 SXM bf16 dense: 989; PCIe: 756)
#     TRM_SHARED_DIR=/data/shared TRM_REFERENCE_DIR=../TinyRecursiveModels bash bench/gpu_check.sh
#     STEPS="1 5" bash bench/gpu_check.sh           # only the numbered checks below
#
# The Python there needs torch, numpy, pyyaml, pytest and, for checks 3-4, minio (trm.storage imports it). On a
# machine with no network, bring wheels downloaded elsewhere, e.g. for Python 3.12:
#     pip download minio --python-version 3.12 --only-binary=:all: --platform manylinux2014_x86_64 -d .whl
#     python3 -m pip install --no-index --find-links .whl minio          # on the GPU machine
#
# 1. tests/test_model_parity.py with TRM_TEST_DEVICE=cuda: every ACT step of the reference fixture in float32 on
#    the GPU (logits/q within 1e-4, loss within 1e-6 relative).
# 2. tests/test_optim.py -k fused: the adam-atan2 CUDA kernel against our PyTorch AdamATan2 (skips when the
#    package is not installed).
# 3. The trainer on the GPU: `torchrun -m trm.train` (NCCL, one process), cpu-tiny in bfloat16 on the reference's
#    tiny dataset: 30 steps with checkpoints, then the same command with max_steps=40 resumes from step-30;
#    then `python -m trm.evaluation.evaluate` on the GPU from the last checkpoint.
# 4. The seed model (preset arc2-seed) in the trainer, BATCH rows per step, on a small ARC-AGI-2 build
#    (training2 + evaluation2, num_aug 8, from ARC_DIR): seconds per optimiser step from metrics.jsonl.
# 5. bench/bench_step.py on the seed model in bfloat16, eager and torch.compile, train and eval steps, with
#    TFLOP/s and MFU (matmul + attention FLOPs); the reference too when TRM_REFERENCE_DIR names a checkout.
# Without CUDA steps 1-2 still run (the CUDA tests skip), 3-4 are skipped and step 5 times the tiny model on
# CPU, so the script can be tried anywhere. A summary table comes last. Exit status: non-zero when a check fails.
set -uo pipefail

PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
BATCH=${BATCH:-192}          # the seed run's per-GPU batch: 768 over 4 GPUs
REPEATS=${REPEATS:-5}
PEAK_TFLOPS=${PEAK_TFLOPS:-989}
SEED_STEPS=${SEED_STEPS:-25}
STEPS=" ${STEPS:-1 2 3 4 5} "
SHARED=${TRM_SHARED_DIR:-../shared}
ARC_DIR=${ARC_DIR:-$SHARED/arc-agi}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/trm-gpu-check.XXXXXX")
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TRM_SHARED_DIR="$SHARED" WANDB_MODE=disabled
status=0
SUMMARY=$WORK/summary.txt
: >"$SUMMARY"

result() {  # result <name> <rc> [detail]
    local verdict=ok
    if [ "$2" = skip ]; then verdict=skipped
    elif [ "$2" != 0 ]; then verdict="FAILED (exit $2)"; status=1; fi
    printf '%-44s %s %s\n' "$1" "$verdict" "${3:-}" >>"$SUMMARY"
}

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

want() { [[ "$STEPS" == *" $1 "* ]]; }

if want 1; then
echo "== 1. parity with the reference fixtures on the device (float32)"
if [ "$HAS_CUDA" = 1 ]; then DEVICE=cuda; else DEVICE=cpu; echo "(no CUDA: parity on CPU)"; fi
TRM_TEST_DEVICE=$DEVICE timeout 300 "$PY" -m pytest -q -p no:cacheprovider -rs tests/test_model_parity.py
result "1. parity on $DEVICE (float32)" $?
fi

if want 2; then
echo "== 2. fused adam-atan2 kernel vs our AdamATan2"
timeout 300 "$PY" -m pytest -q -p no:cacheprovider -rs tests/test_optim.py -k fused | tee "$WORK/fused.log"
rc=${PIPESTATUS[0]}
if grep -q "1 skipped" "$WORK/fused.log"; then result "2. fused adam-atan2 vs ours" skip "(kernel not importable)"
else result "2. fused adam-atan2 vs ours" "$rc"; fi
fi

# one process under torchrun: NCCL init, rank env, the trainer's teardown
torchrun1() { timeout "$1" "$PY" -m torch.distributed.run --standalone --nproc-per-node 1 -m trm.train "${@:2}"; }
# seconds per optimiser step between steps $2 and $3 (default: the last) of metrics.jsonl in run folder $1
step_time() {
    "$PY" - "$1" "$2" "${3:-0}" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1] + "/metrics.jsonl") if line.strip()]
times = {r["step"]: r["time"] for r in rows if "train/lm_loss" in r}
first, last = int(sys.argv[2]), int(sys.argv[3]) or max(times)
steps = sorted(times)
if steps != list(range(1, max(times) + 1)):
    sys.exit(f"metrics.jsonl steps are not 1..{max(times)}: {steps}")
print(f"{(times[last] - times[first]) / (last - first):.4f}")
EOF
}

if [ "$HAS_CUDA" = 1 ]; then
  if want 3; then
    echo "== 3. trainer on the GPU: cpu-tiny in bfloat16, checkpoint, resume, evaluate"
    TINY=(preset=cpu-tiny device=cuda arch.forward_dtype=bfloat16 global_batch_size=8 micro_batch_size=null
          "data_paths=[$SHARED/reference-fixtures/tiny_dataset]"
          "run_dir=$WORK/tiny" epochs=1000 eval_interval=1000 checkpoint_every_n_steps=10 progress=False wandb=off
          evaluators=[] run_name=gpu-tiny)
    torchrun1 300 "${TINY[@]}" max_steps=30 && torchrun1 300 "${TINY[@]}" max_steps=40 \
        && tiny_s=$(step_time "$WORK/tiny" 5 30) \
        && [ -f "$WORK/tiny/checkpoints/step-40/meta.json" ] \
        && timeout 300 "$PY" -m trm.evaluation.evaluate --checkpoint "$WORK/tiny/checkpoints/step-40" \
            --data "$SHARED/reference-fixtures/tiny_dataset" --output-dir "$WORK/tiny-eval" --device cuda \
            --dtype bfloat16 && [ -f "$WORK/tiny-eval/submission.json" ]
    result "3. trainer + resume + evaluate (cuda, bf16)" $? "${tiny_s:+${tiny_s} s/step (cpu-tiny, 8 rows)}"
  fi
  if want 4; then

    echo "== 4. seed model in the trainer, $BATCH rows per step, bfloat16"
    timeout 300 "$PY" -m trm.data.build --input-file-prefix "$ARC_DIR/arc-agi" --subsets training2 evaluation2 \
        --test-set-name evaluation2 --num-aug 8 --output-dir "$WORK/arc2-small" --quiet
    rc=$?
    if [ $rc = 0 ]; then
        torchrun1 420 preset=arc2-seed device=cuda "data_paths=[$WORK/arc2-small]" "run_dir=$WORK/seed" \
            global_batch_size="$BATCH" max_steps="$SEED_STEPS" epochs=100000 eval_interval=100000 evaluators=[] \
            progress=False wandb=off run_name=gpu-seed
        rc=$?
    fi
    seed_s=""
    [ $rc = 0 ] && seed_s=$(step_time "$WORK/seed" 5) || rc=1
    result "4. seed trainer (cuda, bf16, batch $BATCH)" $rc \
        "${seed_s:+${seed_s} s/step, $(awk "BEGIN{printf \"%.0f\", $BATCH/$seed_s}") ex/s per GPU}"
  fi
else
    result "3. trainer + resume + evaluate" skip "(no CUDA)"
    result "4. seed trainer" skip "(no CUDA)"
fi

if want 5; then
echo "== 5. throughput, bfloat16, eager vs torch.compile"
if [ "$HAS_CUDA" = 1 ]; then
    timeout 400 "$PY" bench/bench_step.py --models seed --device cuda --dtype bfloat16 --batch "$BATCH" \
        --repeats "$REPEATS" --compile both --peak-tflops "$PEAK_TFLOPS" | tee "$WORK/step.log"
    result "5. bench_step seed (cuda, bf16, batch $BATCH)" "${PIPESTATUS[0]}"
else
    echo "(no CUDA: tiny model on CPU instead, eager only)"
    "$PY" bench/bench_step.py --models tiny --device cpu --dtype bfloat16 --batch 8 --repeats 2 | tee "$WORK/step.log"
    result "5. bench_step tiny (cpu)" "${PIPESTATUS[0]}"
fi
grep -E "^(seed|tiny) " "$WORK/step.log" | sed 's/  steps .*first/  first/' >>"$SUMMARY"
fi

echo "== summary"
cat "$SUMMARY"
exit $status
