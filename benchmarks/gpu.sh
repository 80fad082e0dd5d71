#!/usr/bin/env bash
# Every GPU check of the project, in two parts of under 10 minutes each on one H200 (H100: a little
# more): PART=speed (the default) and PART=sweeps, run back to back on the same warm machine.
#
# Run from the repository root on the GPU machine (the device tool), carrying the wheels of the
# packages its image lacks (ml_collections, for the config files):
#   echo /.whl/ >> .git/info/exclude
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_17_x86_64 -d .whl ml-collections==1.1.0
#   OUT=<results dir> PART=speed bash benchmarks/gpu.sh; OUT=<results dir> PART=sweeps bash benchmarks/gpu.sh
# Dry run on a CPU, every step at toy size, limits ×4:
#   SMOKE=1 OUT=/tmp/out BENCHMARK_RESULTS=/tmp/out.json bash benchmarks/gpu.sh
#
# Steps run in order of priority, each under its own time limit, and none starts once DEADLINE_S
# (default 540 s) have passed since the start, nor runs past it: a slow step cannot starve the
# ones before it, only those after it. A step that overruns gets SIGUSR1 first (the benchmarks then
# print every thread's stack: where the time went) and SIGKILL 10 s later. Every step shares one
# JAX compilation cache (/tmp/resnorm_jax_cache), so a program compiled by one step (autotuning
# included) is not compiled again by the next. $OUT receives at most 8 files: env.txt (environment,
# the log of steps, the GPU tests), profile.md, models.md, projection.md, results.json (every row
# the benchmarks wrote), sweep.txt (both sweeps' tables), image_sweep_summary.json,
# sweep_summary.json.
#
# What each step is for, and its estimate on an H200 (2026-11-27, jax 0.11.2: ~6 s to start Python
# and the GPU backend per process; compiles of 3-10 s for the scanned builds; steps of 29-31 ms for
# ResNet-164 and ProcResNet-166 at batch 128, 172 ms for ResNet-1001, 20 ms for ResNet-110). Two
# runs measured the baseline; what is left:
# PART=speed
#   the unrolled build of ResNet-164 (no while loops)  ~60 s?  does it cut the 34 kernels a layer?
#   profile 164, scanned then unrolled                  ~90 s   kernels per class, both builds
#   end to end, ProcResNet-166, decomposed, 200 steps  ~80 s   where the 7.2% gap goes
#   bfloat16 (164)                                      ?       no row within 45 s before
#   ResNet-1001 with remat, both policies              ~60 s   the 18.5 GiB goal
#   batch 512 and 1024 (164)                            ~50 s
#   scan_unroll=2 (164)                                 ~30 s
#   the unrolled ProcResNet-166 and ResNet-110         ~120 s?
#   then, as the deadline allows: profile bf16, projection overhead, stem projection, the GPU tests.
# PART=sweeps
#   the image depth sweep at the full depth list (:gpu, 2 seeds, ResNet-1202 included; 38 runs of
#   500 steps, 4 at a time)                             ~300 s?
#   the default MLP depth sweep                         ~100 s
set -u
OUT=${OUT:-/tmp/resnorm_gpu}
PART=${PART:-speed}
DEADLINE_S=${DEADLINE_S:-$([ -n "${SMOKE:-}" ] && echo 3000 || echo 540)}
SCALE=${SCALE:-$([ -n "${SMOKE:-}" ] && echo 4 || echo 1)}  # time limits ×SCALE (a 2-core CPU compiles slowly)
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=. BENCHMARK_RESULTS=${BENCHMARK_RESULTS:-$PWD/benchmarks/results.json}
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/resnorm_jax_cache}
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=.:/tmp/site
fi

# Model sizes: the speed issue's, or toys for the CPU dry run.
if [ -n "${SMOKE:-}" ]; then
  P164=preact_resnet=11 P1001=preact_resnet=29 PROC=procresnet=13 R110=resnet=8
  SIZE=(--platform cpu --image 8 --width_multiplier 0.25) B128=4 B512=8 B1024=16 REPEATS=1 STEPS=1
  OVERHEAD=(--platform cpu --image 8 --depth 13 --batch 4 --rounds 1 --per_round 1)
  END_TO_END=(--steps=6 --width=0.25 --depth=13 --noscan --batch_size=8)
  IMAGE_SWEEP=(--config.depths=20 --config.overrides.procresnet.depths=13
               "--config.settings=('preact_resnet','procresnet')" --config.seeds=0 --config.num_steps=4 --config.data.image_size=8
               --config.model.width_multiplier=0.25 --config.model.scan=False)
  STEM=(--platform cpu --repeats 1 --no-padded)
  SWEEP=(--config.depths=2 --config.num_steps=20 --config.log_every=10 --config.checkpoint_every=10)
  TESTS=(tests/test_theory.py)
else
  P164=preact_resnet=164 P1001=preact_resnet=1001 PROC=procresnet=166 R110=resnet=110
  SIZE=() B128=128 B512=512 B1024=1024 REPEATS=10 STEPS=3
  OVERHEAD=(--rounds 20 --per_round 5)
  END_TO_END=(--variant=procresnet166 --steps=200)
  IMAGE_SWEEP=()  # the config's own: both seeds, every depth
  STEM=(--repeats 10)
  SWEEP=()
  TESTS=(tests/test_signal.py tests/test_procrustes.py tests/test_theory.py)
fi

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
  timeout -s USR1 -k 10 "$limit" "$@" 2>&1 | grep -v "^WARNING\|^W1\|^I1" | tee -a "$OUT/$file"
  local status=${PIPESTATUS[0]}
  (( status )) && log "exit status $status: $title"
  cp "$BENCHMARK_RESULTS" "$OUT/results.json" 2>/dev/null
  return 0
}
MODELS=(python3 -m benchmarks.models "${SIZE[@]}" --repeats "$REPEATS")
PROFILE=(python3 -m benchmarks.profile_step "${SIZE[@]}" --batch "$B128" --repeats "$REPEATS" --steps "$STEPS")

log "environment (PART=$PART)"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  python3 -c "import sys, jax, flax, optax, orbax.checkpoint; print('Python', sys.version.split()[0], '| jax', jax.__version__, '| flax', flax.__version__, '| optax', optax.__version__); print(jax.devices())"
  date -u +%Y-%m-%d
} 2>&1 | tee -a "$OUT/env.txt"

if [ "$PART" = speed ]; then
  step 150 models.md "the unrolled build (scan=False), batch $B128" -- \
    "${MODELS[@]}" --batch "$B128" --no-scan --depths "$P164"
  step 90 profile.md "profile: where a step's time goes, batch $B128, float32, scanned" -- "${PROFILE[@]}" --models "$P164"
  step 90 profile.md "profile: the unrolled build" -- "${PROFILE[@]}" --no-scan --models "$P164"
  step 120 models.md "end to end: experiments.train (CIFAR recipe, synthetic data) against the loop's steps without the loop" -- \
    python3 -m benchmarks.end_to_end "${END_TO_END[@]}"
  step 120 models.md "variant: bfloat16 compute, float32 parameters" -- \
    "${MODELS[@]}" --batch "$B128" --dtype bfloat16 --depths "$P164"
  for policy in dots_saveable nothing_saveable; do
    step 45 models.md "variant: pre-act ResNet-1001, remat $policy (its own process, its own peak memory)" -- \
      "${MODELS[@]}" --batch "$B128" --remat --remat_policy "$policy" --depths "$P1001"
  done
  step 45 models.md "batch $B512" -- "${MODELS[@]}" --batch "$B512" --depths "$P164"
  step 50 models.md "batch $B1024" -- "${MODELS[@]}" --batch "$B1024" --depths "$P164"
  step 45 models.md "variant: scan_unroll=2" -- "${MODELS[@]}" --batch "$B128" --scan_unroll 2 --depths "$P164"
  step 150 models.md "the unrolled build (scan=False): ProcResNet and ResNet-110" -- \
    "${MODELS[@]}" --batch "$B128" --no-scan --depths "$PROC" --depths "$R110"
  step 60 profile.md "profile: bfloat16" -- "${PROFILE[@]}" --dtype bfloat16 --models "$P164"
  step 80 projection.md "projection overhead: ProcResNet step with procrustes p=0.5 (cond, host-decided), every=1, unconditional" -- \
    python3 -m benchmarks.projection_overhead "${OVERHEAD[@]}"
  step 60 projection.md "stem projection: error of the circular and zero-padded operators against rounds" -- \
    python3 -m benchmarks.stem_projection "${STEM[@]}"
  step 100 env.txt "tests that exercise jax 0.11 on the GPU" -- \
    python3 -m pytest -q -x -p no:cacheprovider -m "not slow" "${TESTS[@]}"
elif [ "$PART" = sweeps ]; then
  image_start=$(date +%s)
  step 420 sweep.txt "the image depth sweep (configs/image_depth_sweep.py:gpu ${IMAGE_SWEEP[*]})" -- \
    python3 -m experiments.sweep --config=configs/image_depth_sweep.py:gpu --workdir=/tmp/resnorm_images "${IMAGE_SWEEP[@]}"
  echo "wall time: $(( $(date +%s) - image_start )) s" >> "$OUT/sweep.txt"
  cp /tmp/resnorm_images/summary.json "$OUT/image_sweep_summary.json" 2>/dev/null
  sweep_start=$(date +%s)
  step 110 sweep.txt "the default depth sweep" -- \
    python3 -m experiments.sweep --config=configs/depth_sweep.py --workdir=/tmp/resnorm_sweep "${SWEEP[@]}"
  echo "wall time: $(( $(date +%s) - sweep_start )) s" >> "$OUT/sweep.txt"
  cp /tmp/resnorm_sweep/summary.json "$OUT/sweep_summary.json" 2>/dev/null
else
  log "PART=$PART: expected speed or sweeps"
  exit 2
fi
log done
