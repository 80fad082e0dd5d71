#!/usr/bin/env bash
# Every GPU check of the project, in one run of well under 10 minutes on one H100/H200.
#
# Run from the repository root on the GPU machine (the device tool), carrying the wheels of the
# packages its image lacks (ml_collections, for the sweep's config files):
#   echo /.whl/ >> .git/info/exclude
#   pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl ml-collections==1.1.0
#   OUT=<results dir> bash benchmarks/gpu.sh
# It writes env.txt, projection.md, models.md, sweep.txt, sweep_summary.json, image_sweep.txt,
# image_sweep_summary.json and tests.txt to $OUT; each step has its own time limit, so a slow step
# cannot starve the others. ONLY=<step> runs the environment step and that one step alone
# (projection, models, sweep, image_sweep, tests), e.g. to fit one step into a 10-minute call:
#   ONLY=image_sweep OUT=<results dir> bash benchmarks/gpu.sh
set -u
OUT=${OUT:-/tmp/resnorm_gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=.
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=.:/tmp/site
fi
step() { echo "== $(date +%T) $*" | tee -a "$OUT/log.txt"; }
ONLY=${ONLY:-}
wanted() { [ -z "$ONLY" ] || [ "$ONLY" = "$1" ]; }

step environment
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import sys, jax, flax, optax, orbax.checkpoint; print('Python', sys.version.split()[0], '| jax', jax.__version__, '| flax', flax.__version__, '| optax', optax.__version__); print(jax.devices())"
  date -u +%Y-%m-%d
} 2>&1 | tee "$OUT/env.txt"

if wanted projection; then
step "projection: Newton-Schulz vs SVD on ProcResNet's kernels"
timeout 90 python3 -m benchmarks.projection --repeats 50 2>&1 | tee "$OUT/projection.md"
fi

if wanted models; then
step "models: compile and step time against depth, ProcResNet with and without the projection"
timeout 220 python3 -m benchmarks.models --procrustes --repeats 10 \
  --depths preact_resnet=164,272,632,1001 --depths procresnet=166,1003 --depths resnet=110,1202 \
  2>&1 | tee "$OUT/models.md"
fi

if wanted sweep; then
step "the default depth sweep"
start=$(date +%s)
timeout 300 python3 -m experiments.sweep --config=configs/depth_sweep.py --workdir=/tmp/resnorm_sweep \
  2>&1 | grep -v "^WARNING\|^W1\|^I1" | tee "$OUT/sweep.txt"
echo "wall time: $(( $(date +%s) - start )) s" | tee -a "$OUT/sweep.txt"
cp /tmp/resnorm_sweep/summary.json "$OUT/sweep_summary.json" 2>/dev/null
fi

if wanted image_sweep; then
step "the image depth sweep at the full depth list (ResNet 8...110 and 1202, plain 8...110, ProcResNet 13...166)"
start=$(date +%s)
timeout 540 python3 -m experiments.sweep --config=configs/image_depth_sweep.py:gpu --workdir=/tmp/resnorm_images \
  2>&1 | grep -v "^WARNING\|^W1\|^I1" | tee "$OUT/image_sweep.txt"
echo "wall time: $(( $(date +%s) - start )) s" | tee -a "$OUT/image_sweep.txt"
cp /tmp/resnorm_images/summary.json "$OUT/image_sweep_summary.json" 2>/dev/null
cp /tmp/resnorm_images/*.png "$OUT/" 2>/dev/null
fi

if wanted tests; then
step "tests that exercise jax 0.11 on the GPU"
timeout 100 python3 -m pytest -q -x -p no:cacheprovider tests/test_signal.py tests/test_procrustes.py \
  tests/test_theory.py 2>&1 | tail -n 15 | tee "$OUT/tests.txt"
fi
step done
