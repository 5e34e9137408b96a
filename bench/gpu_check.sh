#!/usr/bin/env bash
# The GPU check of issue 14: one script, one GPU (H100/H200), no network, under 10 minutes; every number in one
# table at the end (bench/gpu_summary.py) and the raw JSON in RESULTS_DIR (default bench/results/; without CUDA a
# temporary folder).
#
#     bash bench/gpu_check.sh                                  # everything that fits in BUDGET_S
#     RESULTS_DIR=$OUT bash bench/gpu_check.sh                 # on the device machine: $OUT comes back
#     STEPS="step trainer" bash bench/gpu_check.sh             # only these parts (names below)
#     BUDGET_S=1500 STEPS="autotune parity" bash bench/gpu_check.sh
#     bash bench/gpu_check.sh                                  # without CUDA: a reduced form (tiny model, few steps)
#
# Preparation, on a machine with network, from the repository root (.gpu-data, .gpu-ref and .whl are git-ignored;
# never commit them):
#     mkdir -p .gpu-data/shared && cp -r ../shared/arc-agi ../shared/reference-fixtures .gpu-data/shared/
#     git clone --depth 1 https://github.com/SamsungSAILMontreal/TinyRecursiveModels ../TinyRecursiveModels \
#         && mkdir -p .gpu-ref && cp -r ../TinyRecursiveModels/models .gpu-ref/          # the reference's models/ only
#     pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#         --abi cp312 --abi abi3 --abi none --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#         --platform manylinux2014_x86_64 --platform any -d .whl \
#         minio argon2-cffi argon2-cffi-bindings cffi pycparser pycryptodome certifi urllib3 omegaconf pyyaml tqdm \
#         pydantic pydantic-core annotated-types typing-inspection einops pytest pluggy iniconfig packaging pygments
# (~9 MB of wheels; the GPU machine's Python is 3.12 with torch (CUDA) and numpy. trm imports minio, omegaconf and
# yaml at run time, tqdm for progress bars; the reference's models/ import pydantic and einops; the parity part
# needs pytest. The `--abi abi3` and `--platform manylinux_2_17_x86_64` are needed: pycryptodome and
# argon2-cffi-bindings ship abi3 wheels only. Omit --python-version etc. when preparing on the GPU's own Python.)
# Then the device tool: carry [".gpu-data", ".gpu-ref", ".whl"], command `RESULTS_DIR=$OUT bash bench/gpu_check.sh`,
# timeout_s 600. The setup part unpacks the wheels of the packages that are not importable into .gpu-pylib (on
# PYTHONPATH; no pip, no network).
#
# Parts, in this order (STEPS picks some; each starts only when its minimum fits in what is left of BUDGET_S, and
# gets at most what is left; the estimates are ours for one H100/H200, not measured; each part's time is printed):
#   step      bench_step.py: seed model, BATCH rows (192: the seed run's per-GPU share of 768 on 4 GPUs), bf16:
#             ours eager / compile / compile:reduce-overhead (CUDA graphs) and eager with each SDPA kernel
#             (OURS), the reference's models/ eager and compiled as its pretrain.py compiles them, on the same
#             weights and batch, train (fwd+bwd+optimisers+EMA) and eval steps: s/step, MFU, peak GiB, ratios.
#                                                                                  ~3-4 min (3 compilations x 2)
#   trainer   bench_trainer.py: builds the seed dataset (training2 + evaluation2 + concept, num_aug 1000: 1.19 M
#             puzzle identifiers, a 2.3 GiB table) and runs `trm train preset=arc2-seed` (torchrun, 1 process,
#             BATCH rows, bf16, compiled, EMA) for TRAIN_STEPS steps: examples/s from metrics.jsonl against the
#             step bench, the data wait per step (log_data_wait), GPU memory.     ~2-3 min
#   learn     bench_learn.py --compare: cpu-tiny on the six ARC-AGI-1 tasks, LEARN_STEPS steps, bf16 + compile
#             and float32 eager, same seed: train exact accuracy side by side.    ~1.5 min
#   recipe    bench_step.py --recipe: one optimiser step of 768 rows as 4x192, 2x384 and 1x768 (compiled), peak
#             memory, and what the seed run's step count costs on one GPU.        ~1.5 min
#   levers    the trainer part again with LEVERS (log_interval=25 prefetch_batches=2) on the same build.  ~1.5 min
#   parity    tests/test_model_parity.py on the device (float32, with the reference code) and the fused
#             adam-atan2 test (skips without the kernel).                          ~1 min
#   autotune  bench_step.py with compile:max-autotune for ours (train and eval) against the reference
#             compiled.                                                            ~4 min (autotuning)
#   resume    (not in the default STEPS) cpu-tiny in bf16 on the device: 30 steps, resume to 40, evaluate.
# With BUDGET_S=570 the first parts fit; what does not is reported as skipped: run it later with STEPS=... .
# Without CUDA the parts run in a reduced form on the CPU (tiny model, batch 4, few steps, no CUDA graphs or autotune),
# to try the code paths anywhere; its numbers mean nothing for the issue.
# Exit status: non-zero when a part that ran failed.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
HAS_CUDA=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
# GPU numbers go to bench/results/; the CPU form's (meaningless for the issue) to a temporary folder
[ "$HAS_CUDA" = 1 ] && RESULTS_DIR=${RESULTS_DIR:-bench/results} || RESULTS_DIR=${RESULTS_DIR:-${TMPDIR:-/tmp}/trm-gpu-check-results}
mkdir -p "$RESULTS_DIR" && RESULTS_DIR=$(cd "$RESULTS_DIR" && pwd)
GPU_DATA=${GPU_DATA:-.gpu-data}
if [ -z "${TRM_SHARED_DIR:-}" ]; then
    if [ -d "$GPU_DATA/shared" ]; then TRM_SHARED_DIR=$GPU_DATA/shared; else TRM_SHARED_DIR=../shared; fi
fi
TRM_SHARED_DIR=$(cd "$TRM_SHARED_DIR" 2>/dev/null && pwd || echo "$TRM_SHARED_DIR")
ARC_DIR=${ARC_DIR:-$TRM_SHARED_DIR/arc-agi}
REF_DIR=${TRM_REFERENCE_DIR:-.gpu-ref}
WHEELS=${WHEELS:-.whl}
PYLIB=$PWD/.gpu-pylib
WORK=$(mktemp -d "${TMPDIR:-/tmp}/trm-gpu-check.XXXXXX")
export PYTHONPATH="$PWD:$PYLIB${PYTHONPATH:+:$PYTHONPATH}" TRM_SHARED_DIR WANDB_MODE=disabled
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$WORK/inductor}  # shared by the parts: later compiles reuse
START=$(date +%s)
PARTS=$WORK/parts.tsv
: >"$PARTS"
status=0

if [ "$HAS_CUDA" = 1 ]; then
    BUDGET_S=${BUDGET_S:-570}
    STEPS=" ${STEPS:-step trainer learn recipe levers parity autotune} "
    LEVERS=${LEVERS:-log_interval=25 prefetch_batches=2}
    BATCH=${BATCH:-192}
    REPEATS=${REPEATS:-3}
    MODEL=seed DEVICE=cuda DTYPE=bfloat16
    SEED_IDS=${SEED_IDS:-1191729}  # identifiers of the seed build (training2 + evaluation2 + concept, num_aug 1000)
    OURS=${OURS:-eager,compile,compile:reduce-overhead,eager+sdpa=flash,eager+sdpa=cudnn,eager+sdpa=efficient}
    RECIPE=${RECIPE:-768:192,768:384,768:768}
    LEARN_STEPS=${LEARN_STEPS:-1000}
    TRAIN_STEPS=${TRAIN_STEPS:-50}
else
    BUDGET_S=${BUDGET_S:-5400}
    STEPS=" ${STEPS:-step trainer learn recipe levers parity} "
    LEVERS=${LEVERS:-log_interval=3 prefetch_batches=2}
    BATCH=${BATCH:-4}
    REPEATS=${REPEATS:-1}
    MODEL=tiny DEVICE=cpu DTYPE=bfloat16
    SEED_IDS=${SEED_IDS:-64}
    OURS=${OURS:-eager,compile,eager+sdpa=math}
    RECIPE=${RECIPE:-8:4,8:8}
    LEARN_STEPS=${LEARN_STEPS:-12}
    TRAIN_STEPS=${TRAIN_STEPS:-8}
fi
RESERVE=15  # seconds kept for the summary

want() { [[ "$STEPS" == *" $1 "* ]]; }
left() { echo $((BUDGET_S - ($(date +%s) - START))); }

# part <name> <minimum s> <maximum s> <command...>: run it with timeout min(maximum, time left), log to RESULTS_DIR
part() {
    local name=$1 min=$2 max=$3 rem limit t0 rc
    shift 3
    want "$name" || return 0
    rem=$(( $(left) - RESERVE ))
    if [ "$rem" -lt "$min" ]; then
        echo "== $name: skipped ($rem s left of BUDGET_S=$BUDGET_S, needs ~$min s)"
        printf '%s\tskipped (time budget)\t0\n' "$name" >>"$PARTS"
        return 0
    fi
    limit=$(( rem < max ? rem : max ))
    echo "== $name (at most ${limit} s; $(( $(date +%s) - START )) s elapsed)"
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$RESULTS_DIR/$name.log"
    rc=${PIPESTATUS[0]}
    local verdict="ok"
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then verdict="timed out after ${limit} s"; status=1
    elif [ "$rc" != 0 ]; then verdict="FAILED (exit $rc)"; status=1; fi
    printf '%s\t%s\t%s\n' "$name" "$verdict" "$(( $(date +%s) - t0 ))" >>"$PARTS"
    echo "== $name: $verdict in $(( $(date +%s) - t0 )) s"
}

echo "== setup ($(date -u +%FT%TZ)): results in $RESULTS_DIR, shared files $TRM_SHARED_DIR, reference $REF_DIR"
# the packages trm, the reference and pytest import, installed from the carried wheels only when missing
"$PY" - "$WHEELS" "$PYLIB" <<'EOF'
import importlib.util, re, sys, zipfile
from pathlib import Path
wheels, target = Path(sys.argv[1]), Path(sys.argv[2])
need = {"minio": "minio", "argon2": "argon2-cffi", "_argon2_cffi_bindings": "argon2-cffi-bindings", "cffi": "cffi",
        "pycparser": "pycparser", "Crypto": "pycryptodome", "certifi": "certifi", "urllib3": "urllib3",
        "omegaconf": "omegaconf", "yaml": "pyyaml", "tqdm": "tqdm", "pydantic": "pydantic",
        "pydantic_core": "pydantic-core", "annotated_types": "annotated-types", "typing_inspection": "typing-inspection",
        "einops": "einops", "pytest": "pytest", "pluggy": "pluggy", "iniconfig": "iniconfig", "packaging": "packaging",
        "pygments": "pygments"}
norm = lambda name: re.sub(r"[-_.]+", "_", name).lower()
missing = [dist for mod, dist in need.items() if importlib.util.find_spec(mod) is None]
files = {norm(w.name.split("-")[0]): w for w in sorted(wheels.glob("*.whl"))} if wheels.is_dir() else {}
# a wheel is a zip of its site-packages files: unpacked into the PYTHONPATH folder, it imports (no pip needed)
for dist in missing:
    wheel = files.get(norm(dist))
    if wheel is None:
        print(f"setup: {dist} is not importable and {wheels}/ has no wheel of it (see the script header)")
        continue
    zipfile.ZipFile(wheel).extractall(target)
    print(f"setup: {dist} from {wheel.name}")
print("setup: every package is importable" if not missing else f"setup: {len(missing)} package(s) were missing")
EOF
[ $? = 0 ] || status=1
"$PY" - "$RESULTS_DIR/env.json" <<'EOF'
import importlib.util, json, os, platform, shutil, subprocess, sys, time
import torch
env = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
       "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
       "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU only",
       "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
if torch.cuda.is_available():
    env["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    env["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
if shutil.which("nvidia-smi"):
    out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True)
    env["driver"] = out.stdout.strip().splitlines()[0] if out.stdout.strip() else None
for name in ("flash_attn_interface", "flash_attn", "adam_atan2_backend", "adam_atan2", "triton", "minio", "pydantic", "einops"):
    env[f"importable:{name}"] = importlib.util.find_spec(name) is not None
print(json.dumps(env, indent=1))
open(sys.argv[1], "w").write(json.dumps(env, indent=1))
EOF
REF_ARGS=()
if [ -f "$REF_DIR/models/losses.py" ]; then REF_ARGS=(--reference-dir "$REF_DIR" --reference eager,compile)
else echo "(no reference code in $REF_DIR: the step bench times ours only; see the header)"; fi

if [ "$HAS_CUDA" = 1 ]; then
    part step 150 330 "$PY" bench/bench_step.py --models seed --device cuda --dtype bfloat16 --batch "$BATCH" \
        --repeats "$REPEATS" --num-ids "$SEED_IDS" --ours "$OURS" "${REF_ARGS[@]}" --json "$RESULTS_DIR/step.json"
    part trainer 120 260 "$PY" bench/bench_trainer.py --arc-prefix "$ARC_DIR/arc-agi" --work "$WORK/trainer" --keep \
        --device cuda --batch "$BATCH" --steps "$TRAIN_STEPS" --skip 10 --timeout 240 --variant plain= \
        --step-json "$RESULTS_DIR/step.json" --json "$RESULTS_DIR/trainer.json"
    RUN_STEPS=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['dataset']['seed_run_steps'])" \
        "$RESULTS_DIR/trainer.json" 2>/dev/null || echo 722099)
    part learn 80 200 "$PY" bench/bench_learn.py --arc-dir "$ARC_DIR" --compare --device cuda --steps "$LEARN_STEPS" \
        --print-every 100 --minutes 3 --json "$RESULTS_DIR/learn.json"
    part recipe 60 200 "$PY" bench/bench_step.py --models seed --device cuda --dtype bfloat16 --num-ids "$SEED_IDS" \
        --recipe "$RECIPE" --recipe-repeats 1 --run-steps "$RUN_STEPS" --json "$RESULTS_DIR/recipe.json"
    TRAINER_DATA=(--arc-prefix "$ARC_DIR/arc-agi")  # the trainer part's build when it is there, else a new one
    [ -f "$WORK/trainer/data/train/dataset.json" ] && TRAINER_DATA=(--data "$WORK/trainer/data")
    part levers 70 180 "$PY" bench/bench_trainer.py "${TRAINER_DATA[@]}" --work "$WORK/levers" --device cuda \
        --batch "$BATCH" --steps "$TRAIN_STEPS" --skip 10 --timeout 170 --variant "levers=$LEVERS" \
        --step-json "$RESULTS_DIR/step.json" --json "$RESULTS_DIR/levers.json"
    part parity 40 120 env TRM_TEST_DEVICE=cuda TRM_REFERENCE_DIR="$REF_DIR" "$PY" -m pytest -q -p no:cacheprovider \
        -o addopts="" -rs tests/test_model_parity.py tests/test_optim.py::test_fused_matches_ours
    part autotune 150 330 "$PY" bench/bench_step.py --models seed --device cuda --dtype bfloat16 --batch "$BATCH" \
        --repeats "$REPEATS" --num-ids "$SEED_IDS" --ours "compile:max-autotune" "${REF_ARGS[@]/eager,compile/compile}" \
        --json "$RESULTS_DIR/autotune.json"
    # cpu-tiny in bf16 on the device through torchrun (NCCL): 30 steps with checkpoints, resume to 40, evaluate
    resume_part() {
        local tiny=(preset=cpu-tiny device=cuda arch.forward_dtype=bfloat16 global_batch_size=8 micro_batch_size=null
                    "data_paths=[$TRM_SHARED_DIR/reference-fixtures/tiny_dataset]" "run_dir=$WORK/tiny" epochs=1000
                    eval_interval=1000 checkpoint_every_n_steps=10 progress=False wandb=off evaluators=[] run_name=gpu-tiny)
        "$PY" -m torch.distributed.run --standalone --nproc-per-node 1 -m trm.train "${tiny[@]}" max_steps=30 \
            && "$PY" -m torch.distributed.run --standalone --nproc-per-node 1 -m trm.train "${tiny[@]}" max_steps=40 \
            && [ -f "$WORK/tiny/checkpoints/step-40/meta.json" ] \
            && "$PY" -m trm.evaluation.evaluate --checkpoint "$WORK/tiny/checkpoints/step-40" \
                --data "$TRM_SHARED_DIR/reference-fixtures/tiny_dataset" --output-dir "$WORK/tiny-eval" --device cuda \
                --dtype bfloat16 && [ -f "$WORK/tiny-eval/submission.json" ]
    }
    export -f resume_part
    export PY WORK TRM_SHARED_DIR
    part resume 60 300 bash -c resume_part
else
    echo "(no CUDA: the reduced form on the CPU; its numbers mean nothing for issue 14)"
    part step 60 1800 "$PY" bench/bench_step.py --models tiny --device cpu --dtype "$DTYPE" --batch "$BATCH" \
        --repeats "$REPEATS" --ours "$OURS" "${REF_ARGS[@]}" --json "$RESULTS_DIR/step.json"
    part trainer 60 900 "$PY" bench/bench_trainer.py --arc-prefix "$ARC_DIR/arc-agi" --subsets training \
        --test-set-name training --num-aug 2 --preset cpu-tiny --work "$WORK/trainer" --keep --device cpu --batch 8 \
        --steps "$TRAIN_STEPS" --skip 2 --variant plain= --json "$RESULTS_DIR/trainer.json"
    part learn 60 1800 "$PY" bench/bench_learn.py --arc-dir "$ARC_DIR" --compare --device cpu --steps "$LEARN_STEPS" \
        --print-every 4 --window 4 --minutes 15 --json "$RESULTS_DIR/learn.json"
    part recipe 60 900 "$PY" bench/bench_step.py --models tiny --device cpu --dtype "$DTYPE" --recipe "$RECIPE" \
        --recipe-compile off --recipe-repeats 1 --run-steps 722099 --json "$RESULTS_DIR/recipe.json"
    part levers 60 900 "$PY" bench/bench_trainer.py --data "$WORK/trainer/data" --preset cpu-tiny --work "$WORK/levers" \
        --device cpu --batch 8 --steps "$TRAIN_STEPS" --skip 2 --variant "levers=$LEVERS" --json "$RESULTS_DIR/levers.json"
    part parity 30 600 "$PY" -m pytest -q -p no:cacheprovider -o addopts="" -rs tests/test_model_parity.py
fi

"$PY" - "$PARTS" "$RESULTS_DIR/parts.json" "$BUDGET_S" "$(( $(date +%s) - START ))" <<'EOF'
import json, sys
parts = [dict(zip(("name", "status", "seconds"), line.rstrip("\n").split("\t"))) for line in open(sys.argv[1]) if line.strip()]
for p in parts:
    p["seconds"] = float(p["seconds"])
json.dump({"parts": parts, "budget_s": int(sys.argv[3]), "elapsed_s": int(sys.argv[4])}, open(sys.argv[2], "w"), indent=1)
EOF
echo
echo "== summary ($(( $(date +%s) - START )) s in all)"
"$PY" bench/gpu_summary.py "$RESULTS_DIR" || status=1
rm -rf "$WORK"
exit $status
