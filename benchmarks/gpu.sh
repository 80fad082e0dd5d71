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
# ones before it, only those after it. $OUT receives 8 files: env.txt (environment, the log of
# steps, the GPU tests), profile.md, models.md, projection.md, results.json (every row the
# benchmarks wrote), sweep.txt (both sweeps' tables), image_sweep_summary.json, sweep_summary.json.
#
# Estimated wall time per step on an H200 (2026-11-27, jax 0.11.2: ~6 s to start Python and the GPU
# backend per process; compiles of 3-10 s; steps of 29-31 ms for ResNet-164 and ProcResNet-166 at
# batch 128, 172 ms for ResNet-1001, 20 ms for ResNet-110; measured by the first run of this script):
#   environment                                        ~5 s
#   projection overhead, 5 configurations interleaved  ~60 s
#   end to end, ProcResNet-166, 300 steps + bare step  ~70 s
#   image sweep :gpu, one seed, without ResNet-1202    ~150 s (18 runs of 500 steps, 4 compiling at once)
#   bfloat16, command buffers, scan_unroll=2 (164/166) ~25 s each
#   batch 512 and 1024 (164)                           ~35 s
#   profile 164 and 166 (trace, top kernels, floor)    ~50 s
#   ResNet-1001 with remat (its own peak memory)       ~25 s
#   stem projection (rounds, both operators)           ~40 s
#   then, as the deadline allows: profile bf16, not donated, the batch-128 rows, ResNet-1001,
#   the GPU tests, Newton-Schulz vs SVD, the remaining depths, the default MLP depth sweep.
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
  END_TO_END=(--steps=6 --width=0.25 --depth=13 --noscan --batch_size=8)
  IMAGE_SWEEP=(--config.depths=8 "--config.overrides.resnet.depths=(8,)" --config.overrides.procresnet.depths=13
               "--config.settings=('resnet','procresnet')" --config.seeds=0 --config.num_steps=4 --config.data.image_size=8
               --config.model.width_multiplier=0.25 --config.model.scan=False)
  STEM=(--platform cpu --repeats 1 --no-padded)
  SWEEP=(--config.depths=2 --config.num_steps=20 --config.log_every=10 --config.checkpoint_every=10)
  TESTS=(tests/test_theory.py)
else
  P164=preact_resnet=164 P272=preact_resnet=272,632 P1001=preact_resnet=1001 PROC=procresnet=166
  PROC_DEEP=procresnet=1003 R110=resnet=110 R1202=resnet=1202 UNROLL=2
  SIZE=() B128=128 B512=512 B1024=1024 REPEATS=10 STEPS=3
  OVERHEAD=(--rounds 20 --per_round 5)
  PROJECTION=(--repeats 50)
  END_TO_END=(--variant=procresnet166 --steps=300)
  # One seed, without ResNet-1202 (its 500 steps alone take ~100 s): what fits this run's budget.
  IMAGE_SWEEP=(--config.seeds=0 "--config.overrides.resnet.depths=(8,14,20,32,56,110)")
  STEM=(--repeats 10)
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

step 80 projection.md "projection overhead: ProcResNet step with procrustes p=0.5 (cond, host-decided), every=1, unconditional" -- \
  python3 -m benchmarks.projection_overhead "${OVERHEAD[@]}"
step 100 models.md "end to end: experiments.train (CIFAR recipe, synthetic data, input pipeline) against the bare step" -- \
  python3 -m benchmarks.end_to_end "${END_TO_END[@]}"
image_start=$(date +%s)
step 170 sweep.txt "the image depth sweep (configs/image_depth_sweep.py:gpu; ${IMAGE_SWEEP[*]})" -- \
  python3 -m experiments.sweep --config=configs/image_depth_sweep.py:gpu --workdir=/tmp/resnorm_images "${IMAGE_SWEEP[@]}"
echo "wall time: $(( $(date +%s) - image_start )) s" >> "$OUT/sweep.txt"
cp /tmp/resnorm_images/summary.json "$OUT/image_sweep_summary.json" 2>/dev/null
step 45 models.md "variant: bfloat16 compute, float32 parameters" -- \
  "${MODELS[@]}" --batch "$B128" --dtype bfloat16 --depths "$P164" --depths "$PROC"
step 45 models.md "variant: command buffers for while loops and conditionals (XLA_FLAGS)" -- \
  env XLA_FLAGS="${XLA_FLAGS:-} $COMMAND_BUFFERS" python3 -m benchmarks.models "${SIZE[@]}" --repeats "$REPEATS" \
  --batch "$B128" --depths "$P164" --depths "$PROC"
step 45 models.md "variant: scan_unroll=$UNROLL" -- \
  "${MODELS[@]}" --batch "$B128" --scan_unroll "$UNROLL" --depths "$P164" --depths "$PROC"
step 35 models.md "batch $B512" -- "${MODELS[@]}" --batch "$B512" --depths "$P164"
step 40 models.md "batch $B1024" -- "${MODELS[@]}" --batch "$B1024" --depths "$P164"
step 90 profile.md "profile: where a step's time goes, batch $B128, float32" -- \
  python3 -m benchmarks.profile_step "${SIZE[@]}" --batch "$B128" --repeats "$REPEATS" --steps "$STEPS" \
  --models "$P164" --models "$PROC"
step 40 models.md "variant: pre-act ResNet-1001 with remat (its own process, its own peak memory)" -- \
  "${MODELS[@]}" --batch "$B128" --remat --depths "$P1001"
step 60 projection.md "stem projection: error of the circular and zero-padded operators against rounds" -- \
  python3 -m benchmarks.stem_projection "${STEM[@]}"
step 60 profile.md "profile: bfloat16" -- \
  python3 -m benchmarks.profile_step "${SIZE[@]}" --batch "$B128" --repeats "$REPEATS" --steps "$STEPS" \
  --dtype bfloat16 --models "$P164"
step 30 models.md "variant: state not donated" -- "${MODELS[@]}" --batch "$B128" --no-donate --depths "$P164"
step 70 models.md "models: batch $B128, float32 (ProcResNet also projecting every step)" -- \
  "${MODELS[@]}" --batch "$B128" --procrustes --depths "$P164" --depths "$PROC" --depths "$R110"
step 40 models.md "models: pre-act ResNet-1001 in its own process (its own peak memory)" -- \
  "${MODELS[@]}" --batch "$B128" --depths "$P1001"
step 100 env.txt "tests that exercise jax 0.11 on the GPU" -- \
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
