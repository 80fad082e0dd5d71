#!/usr/bin/env bash
# Every GPU check of the project, in one run of about 8 minutes on one H200 (H100: a little more).
#
# Run from the repository root on the GPU machine (the device tool), carrying the wheels of the
# packages its image lacks (ml_collections, for the sweep's config files):
#   echo /.whl/ >> .git/info/exclude
#   pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl ml-collections==1.1.0
#   OUT=<results dir> bash benchmarks/gpu.sh
# Dry run on a CPU, every step at toy size, limits ×4:
#   SMOKE=1 OUT=/tmp/out BENCHMARK_RESULTS=/tmp/out.json bash benchmarks/gpu.sh
#
# Steps run in order of priority, each under its own time limit, and none starts once DEADLINE_S
# (default 470 s) have passed since the start, nor runs past it: a slow step cannot starve the
# ones before it, only those after it. $OUT receives 8 files: env.txt (environment and the log of
# steps), profile.md, models.md, projection.md, results.json (every row the benchmarks wrote),
# sweep.txt, sweep_summary.json, tests.txt.
#
# Estimated wall time per step on an H200, from benchmarks/RESULTS.md (2026-11-27, jax 0.11.2: the
# first compilation ~8 s then ~3 s per train step, lowering ~1 s; steps of 29 ms for ResNet-164 and
# ProcResNet-166, 172 ms for ResNet-1001, 20.5 ms for ResNet-110; ~6 s to start Python and the
# GPU backend per process; the sweep 60 s):
#   environment                          ~5 s
#   profile, 4 models                    ~70 s  (per model: 1 scanned + 2 small unrolled compiles, 13 steps, trace)
#   models, 164/166/166+proj/110         ~35 s
#   models, ResNet-1001 (own peak)       ~12 s
#   projection overhead, interleaved     ~50 s  (4 compiles, 30 rounds x 5 steps x 4 steps of ~29 ms)
#   bfloat16, 164/166                    ~20 s
#   scan_unroll=2, 164/166               ~20 s
#   batch 512, batch 1024 (164)          ~30 s
#   profile bfloat16 164                 ~20 s
#   command buffers for loops, 164/166   ~20 s
#   not donated, 164                     ~14 s
#   tests                                ~60 s
#   projection (NS vs SVD)               ~25 s
#   depth scaling, the remaining depths  ~40 s
#   depth sweep                          ~60 s  (total ~480 s; what the deadline leaves out is logged as skipped)
set -u
OUT=${OUT:-/tmp/resnorm_gpu}
DEADLINE_S=${DEADLINE_S:-$([ -n "${SMOKE:-}" ] && echo 3000 || echo 470)}
SCALE=${SCALE:-$([ -n "${SMOKE:-}" ] && echo 4 || echo 1)}  # time limits ×SCALE (a 2-core CPU compiles slowly)
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=. BENCHMARK_RESULTS=${BENCHMARK_RESULTS:-$PWD/benchmarks/results.json}
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=.:/tmp/site
fi

# Model sizes: the speed issue's, or toys for the CPU dry run.
if [ -n "${SMOKE:-}" ]; then
  P164=preact_resnet=11 P272=preact_resnet=20 P1001=preact_resnet=29 PROC=procresnet=13 PROC_DEEP=procresnet=22
  R110=resnet=8 R1202=resnet=14 UNROLL=2
  SIZE=(--platform cpu --image 8 --width_multiplier 0.25) B128=4 B512=8 B1024=16 REPEATS=1 STEPS=1
  OVERHEAD=(--platform cpu --image 8 --depth 13 --batch 4 --rounds 1 --per_round 1)
  PROJECTION=(--platform cpu --repeats 1)
  SWEEP=(--config.depths=2 --config.num_steps=20 --config.log_every=10 --config.checkpoint_every=10)
  TESTS=(tests/test_theory.py)
else
  P164=preact_resnet=164 P272=preact_resnet=272,632 P1001=preact_resnet=1001 PROC=procresnet=166
  PROC_DEEP=procresnet=1003 R110=resnet=110 R1202=resnet=1202 UNROLL=2
  SIZE=() B128=128 B512=512 B1024=1024 REPEATS=10 STEPS=3
  OVERHEAD=(--rounds 30 --per_round 5)
  PROJECTION=(--repeats 50)
  SWEEP=()
  TESTS=(tests/test_signal.py tests/test_procrustes.py tests/test_theory.py)
fi
COMMAND_BUFFERS="--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUDNN,CUSTOM_CALL,CONDITIONAL,WHILE --xla_gpu_graph_min_graph_size=1"

start=$(date +%s)
log() { echo "== $(date +%T) +$(( $(date +%s) - start ))s $*" | tee -a "$OUT/env.txt"; }
# step LIMIT FILE TITLE -- COMMAND...: runs COMMAND under min(LIMIT, time left), appending to FILE.
step() {
  local limit=$(( $1 * SCALE )) file=$2 title=$3
  shift 4
  local left=$(( DEADLINE_S - ($(date +%s) - start) ))
  if (( left < 15 )); then
    log "skipped (deadline): $title"
    return
  fi
  (( limit > left )) && limit=$left
  log "$title (limit ${limit} s)"
  echo -e "\n## $title\n" >> "$OUT/$file"
  timeout "$limit" "$@" 2>&1 | grep -v "^WARNING\|^W1\|^I1" | tee -a "$OUT/$file"
  local status=${PIPESTATUS[0]}
  (( status )) && log "exit status $status: $title"
  cp "$BENCHMARK_RESULTS" "$OUT/results.json" 2>/dev/null
  return 0
}
MODELS=(python3 -m benchmarks.models "${SIZE[@]}" --repeats "$REPEATS")

log environment
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  python3 -c "import sys, jax, flax, optax, orbax.checkpoint; print('Python', sys.version.split()[0], '| jax', jax.__version__, '| flax', flax.__version__, '| optax', optax.__version__); print(jax.devices())"
  date -u +%Y-%m-%d
} 2>&1 | tee -a "$OUT/env.txt"

step 150 profile.md "profile: where a step's time goes, batch $B128, float32" -- \
  python3 -m benchmarks.profile_step "${SIZE[@]}" --batch "$B128" --repeats "$REPEATS" --steps "$STEPS" \
  --models "$P164" --models "$PROC" --models "$P1001" --models "$R110"
step 70 models.md "models: batch $B128, float32 (ProcResNet also projecting every step)" -- \
  "${MODELS[@]}" --batch "$B128" --procrustes --depths "$P164" --depths "$PROC" --depths "$R110"
step 40 models.md "models: pre-act ResNet-1001 in its own process (its own peak memory)" -- \
  "${MODELS[@]}" --batch "$B128" --depths "$P1001"
step 90 projection.md "projection overhead: ProcResNet step with procrustes p=0.5, every=1, unconditional" -- \
  python3 -m benchmarks.projection_overhead "${OVERHEAD[@]}"
step 45 models.md "variant: bfloat16 compute, float32 parameters" -- \
  "${MODELS[@]}" --batch "$B128" --dtype bfloat16 --depths "$P164" --depths "$PROC"
step 45 models.md "variant: scan_unroll=$UNROLL" -- \
  "${MODELS[@]}" --batch "$B128" --scan_unroll "$UNROLL" --depths "$P164" --depths "$PROC"
step 35 models.md "batch $B512" -- "${MODELS[@]}" --batch "$B512" --depths "$P164"
step 40 models.md "batch $B1024" -- "${MODELS[@]}" --batch "$B1024" --depths "$P164"
step 60 profile.md "profile: bfloat16" -- \
  python3 -m benchmarks.profile_step "${SIZE[@]}" --batch "$B128" --repeats "$REPEATS" --steps "$STEPS" \
  --dtype bfloat16 --models "$P164"
step 45 models.md "variant: command buffers for while loops and conditionals (XLA_FLAGS)" -- \
  env XLA_FLAGS="${XLA_FLAGS:-} $COMMAND_BUFFERS" python3 -m benchmarks.models "${SIZE[@]}" --repeats "$REPEATS" \
  --batch "$B128" --depths "$P164" --depths "$PROC"
step 30 models.md "variant: state not donated" -- "${MODELS[@]}" --batch "$B128" --no-donate --depths "$P164"
step 100 tests.txt "tests that exercise jax 0.11 on the GPU" -- \
  python3 -m pytest -q -x -p no:cacheprovider -m "not slow" "${TESTS[@]}"
step 60 projection.md "projection: Newton-Schulz vs SVD on ProcResNet's kernels" -- \
  python3 -m benchmarks.projection "${PROJECTION[@]}"
step 90 models.md "depth scaling: the remaining depths" -- \
  "${MODELS[@]}" --batch "$B128" --procrustes --depths "$P272" --depths "$PROC_DEEP" --depths "$R1202"
sweep_start=$(date +%s)
step 120 sweep.txt "the default depth sweep" -- \
  python3 -m experiments.sweep --config=configs/depth_sweep.py --workdir=/tmp/resnorm_sweep "${SWEEP[@]}"
echo "wall time: $(( $(date +%s) - sweep_start )) s" >> "$OUT/sweep.txt"
cp /tmp/resnorm_sweep/summary.json "$OUT/sweep_summary.json" 2>/dev/null
log done
