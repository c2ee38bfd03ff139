#!/usr/bin/env bash
# One prepared device check for the day a GPU is lent (~14 minutes on one H100/H200: ~6 for the
# checks, <= 8 for the compare step's gpu preset; GPU_CHECK_BUDGET_S lowers it).
#   scripts/gpu_check.sh [--steps A,B] [OUT_DIR]  # CUDA machine (OUT_DIR default gpu_check_out/)
#   scripts/gpu_check.sh --dry-run [OUT_DIR]      # the same steps on the CPU at toy sizes (CI; minutes)
#   --steps runs only the named steps (a device lent for 10-minute commands: one call with every
#   step but compare_gpu into OUT_DIR/checks, a second with --steps compare_gpu into OUT_DIR/compare).
#
# Needs only what scripts/setup.sh installs (the project's .venv, or $PYTHON). Writes everything
# under OUT_DIR: one log per step (<step>.log), the bench JSON, the training runs, the compare
# report, junit XML of the unit tests, summary.tsv (step, status, seconds) and summary.md.
# Prints the summary table at the end; exits 1 if a step failed or was skipped for lack of time.
#
# Steps (GPU sizes; --dry-run shrinks batch sizes, resolutions, epochs and data):
#   unit_tests      tests/test_cuda.py on the device (values vs the CPU, fast vs reference paths,
#                   fp32/bf16/fp16+GradScaler training steps, GPSA cache, bench peak memory;
#                   tests/test_fake_cuda.py runs in the default suite everywhere)
#   bench_vs_timm   mixerlab bench --vs-timm --device cuda --dtype bfloat16 for DeiT-S, ConViT-Ti,
#                   PoolFormer-S12 (and LaViT-T, which timm lacks) at batch 256, infer + train
#   flops_util      scripts/flops_utilisation.py on those rows vs the measured bf16 matmul rate
#   train_fp16      mixerlab train, AMP fp16 with the grad scaler, one epoch (dry run: bf16, as the
#                   trainer allows fp16 on CUDA only)
#   train_bf16      mixerlab train, AMP bf16, one epoch
#   torchrun_train  torchrun --nproc_per_node 1 mixerlab train, one epoch of a micro model
#   ddp_nccl        torchrun + DistributedDataParallel over NCCL (dry run: gloo) for a few steps
#   compile_deit    torch.compile (inductor; dry run: aot_eager) vs eager, one training step + timing
#   compile_convit  the same for ConViT (GPSA)
#   compile_deit_s  DeiT-S, bf16, batch 256, inductor max-autotune (no CUDA graphs) vs eager:
#                   equal loss/gradients (fp32), images/s both ways, share of the bf16 matmul rate
#   lavit_twin      scripts/bench_lavit.py: LaViT-T vs its all-vanilla twin, bf16, 224 px, alternating
#   compare_gpu     mixerlab compare --preset gpu: the whole comparison, 3 seeds, LR sweep, <= 8 min
#                   (dry run: --preset gpu --dry-run, toy sizes on the CPU)
set -uo pipefail

usage() { sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; }
DRY=0
OUT=""
ONLY=""
NEXT_IS_STEPS=0
for arg in "$@"; do
  if [ "$NEXT_IS_STEPS" = 1 ]; then ONLY=",$arg,"; NEXT_IS_STEPS=0; continue; fi
  case "$arg" in
    --dry-run) DRY=1 ;;
    --steps) NEXT_IS_STEPS=1 ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "gpu_check.sh: unknown option $arg (use --dry-run, --help)" >&2; exit 2 ;;
    *) if [ -n "$OUT" ]; then echo "gpu_check.sh: one output folder only (got $OUT and $arg)" >&2; exit 2; fi
       OUT="$arg" ;;
  esac
done
if [ "$NEXT_IS_STEPS" = 1 ]; then echo "gpu_check.sh: --steps needs a comma-separated list of step names" >&2; exit 2; fi
OUT=${OUT:-gpu_check_out}
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PY=${PYTHON:-"$REPO/.venv/bin/python"}
[ -x "$PY" ] || PY=$(command -v python3)
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT" || { echo "gpu_check.sh: cannot create $OUT" >&2; exit 2; }
OUT="$(cd "$OUT" && pwd)"
cd "$REPO"

if [ "$DRY" = 1 ]; then
  # Toy sizes; the limits are the device run's times SCALE (a CPU, maybe a shared one).
  DEV=cpu; BUDGET=${GPU_CHECK_BUDGET_S:-1800}; SCALE=6
  BENCH=(--img-size 32 --batch-size 2 --reps 1 --warmup 0 --min-time 0)
  FLOPS=(--n 256 --reps 2)
  TRAIN=(--synthetic-size 32 --batch-size 16 --eval-batch-size 32 --bn-calibration-batches 1 --num-threads 1)
  FP16=bf16; CBACKEND=aot_eager; CSTEPS=1; CBATCH=2; DDPB=2
  CBIG=(--model deit_micro --backend aot_eager --batch 2 --steps 1 --matmul-n 256)
  TWIN=(--sizes 64 --batch 2 --train-batch 2 --reps 1 --warmup 0 --threads 1)
  PRESET=(--preset gpu --dry-run); TESTS=(tests/test_cuda.py -k "deit or gpsa")
  export MIXERLAB_TEST_DEVICE=cpu
else
  DEV=cuda; BUDGET=${GPU_CHECK_BUDGET_S:-800}; SCALE=1
  BENCH=(--batch-size 256 --reps 5 --warmup 3)
  FLOPS=()
  TRAIN=(--synthetic-size 8192 --batch-size 256 --eval-batch-size 512 --num-workers 4)
  FP16=fp16; CBACKEND=inductor; CSTEPS=10; CBATCH=128; DDPB=128
  CBIG=(--model deit_small --backend inductor --mode max-autotune-no-cudagraphs --batch 256 --steps 10)
  TWIN=(--sizes 224 --batch 256 --train-batch 128 --reps 7 --warmup 2)
  PRESET=(--preset gpu); TESTS=(tests/test_cuda.py)
  export MIXERLAB_TEST_DEVICE=cuda
  if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check.sh: no CUDA device visible to $PY; use --dry-run on a CPU machine" >&2; exit 2
  fi
fi
# compare's data: the Debian Fashion-MNIST package when installed, else synthetic images.
if [ "$DRY" = 0 ] && ls /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz >/dev/null 2>&1; then
  CDATA=fashion-mnist
else
  CDATA=synthetic
fi
COMMON_TRAIN=(--data synthetic --epochs 1 --device "$DEV" --progress plain --log-every 10 "${TRAIN[@]}")

SUMMARY="$OUT/summary.tsv"
printf 'step\tstatus\tseconds\n' > "$SUMMARY"
START=$(date +%s)
FAILED=0

# step NAME LIMIT_S CMD...: run CMD with stdout+stderr in OUT/NAME.log, at most LIMIT_S seconds
# and never past the overall budget; records ok / failed (rc) / timeout / skipped.
step() {
  local name=$1 limit=$(( $2 * SCALE )); shift 2
  if [ -n "$ONLY" ] && [[ "$ONLY" != *",$name,"* ]]; then return; fi
  local left=$(( BUDGET - ($(date +%s) - START) ))
  if [ "$left" -lt 15 ]; then
    printf '%s\tskipped (time budget)\t0\n' "$name" >> "$SUMMARY"; FAILED=1
    echo "== $name: skipped (time budget spent)"; return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (limit ${limit}s): $*"
  local t0 rc status
  t0=$(date +%s.%N)
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  if [ $rc = 0 ]; then status=ok
  elif [ $rc = 124 ] || [ $rc = 137 ]; then status="timeout (${limit}s)"; FAILED=1
  else status="failed (rc $rc)"; FAILED=1
  fi
  local secs
  secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  printf '%s\t%s\t%s\n' "$name" "$status" "$secs" >> "$SUMMARY"
  echo "   $status in ${secs}s (log: $OUT/$name.log)"
  [ "$status" = ok ] || tail -n 5 "$OUT/$name.log" | sed 's/^/   | /'
}



{
  echo "gpu_check: $( [ "$DRY" = 1 ] && echo "dry run on the CPU" || echo "device run" ), output $OUT, budget ${BUDGET}s"
  "$PY" - <<'EOF'
import platform, torch
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}, GPU: {gpu}")
EOF
} | tee "$OUT/environment.txt"

step unit_tests 150 "$PY" -m pytest -q -p no:cacheprovider "${TESTS[@]}" --junitxml "$OUT/unit_tests.xml"
step bench_vs_timm 200 "$PY" -m mixerlab bench deit_small convit_tiny poolformer_s12 lavit_tiny --vs-timm \
  --device "$DEV" --dtype bfloat16 --mode infer train "${BENCH[@]}" --out "$OUT/bench_vs_timm.json"
step flops_util 40 "$PY" scripts/flops_utilisation.py "$OUT/bench_vs_timm.json" --dtype bfloat16 "${FLOPS[@]}"
step train_fp16 60 "$PY" -m mixerlab train --model deit_micro --amp "$FP16" "${COMMON_TRAIN[@]}" --out "$OUT/train_fp16"
step train_bf16 60 "$PY" -m mixerlab train --model lavit_micro --amp bf16 "${COMMON_TRAIN[@]}" --out "$OUT/train_bf16"
step torchrun_train 60 "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 -m mixerlab train \
  --model convit_micro "${COMMON_TRAIN[@]}" --out "$OUT/torchrun_train"
step ddp_nccl 45 "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 scripts/gpu_check_steps.py ddp \
  --device "$DEV" --model deepvit_micro --batch "$DDPB"
step compile_deit 90 "$PY" scripts/gpu_check_steps.py compile --model deit_micro --device "$DEV" \
  --backend "$CBACKEND" --steps "$CSTEPS" --batch "$CBATCH"
step compile_convit 120 "$PY" scripts/gpu_check_steps.py compile --model convit_micro --device "$DEV" \
  --backend "$CBACKEND" --steps "$CSTEPS" --batch "$CBATCH"
step compile_deit_s 150 "$PY" scripts/gpu_check_steps.py compile --device "$DEV" --dtype bfloat16 \
  --matmul-rate "${CBIG[@]}"
step lavit_twin 90 "$PY" scripts/bench_lavit.py --model lavit_tiny --device "$DEV" --dtype bfloat16 "${TWIN[@]}" \
  --out "$OUT/lavit_twin.json"
# the gpu preset (mixerlab/compare/presets.py, arithmetic in docs/compare_presets.md): <= 8 min on
# one H100/H200; its dry run ~1-2 min on 2 CPU cores (SCALE 6 gives it 16 min)
step compare_gpu 500 "$PY" -m mixerlab compare "${PRESET[@]}" --data "$CDATA" --out "$OUT/compare"

TOTAL=$(( $(date +%s) - START ))
{
  echo "| step | status | seconds |"
  echo "|---|---|---:|"
  tail -n +2 "$SUMMARY" | awk -F'\t' '{ printf "| %s | %s | %s |\n", $1, $2, $3 }'
  echo "| total | $( [ "$FAILED" = 0 ] && echo ok || echo failed ) | $TOTAL |"
} > "$OUT/summary.md"
echo
echo "gpu_check summary ($( [ "$DRY" = 1 ] && echo "dry run, CPU" || echo "device" )):"
column -t -s $'\t' "$SUMMARY" 2>/dev/null || cat "$SUMMARY"
echo "total ${TOTAL}s; results in $OUT (summary.md, one log per step)"
exit $FAILED
