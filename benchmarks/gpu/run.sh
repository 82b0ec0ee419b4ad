#!/usr/bin/env bash
# The GPU checks in one call, on a CUDA host with torch and transformers but no package index, with
# .bench/gpu from benchmarks/gpu/prepare.sh beside the checkout (e.g. the device tool's
# `run(command="bash benchmarks/gpu/run.sh", carry=[".bench/gpu"])`). Writes its logs and JSON to $OUT
# (default /tmp/gpu-out):
#   speed.*    benchmarks/gpu_speed.py: every training and scoring ratio against the seed recipe, MFU
#   profile.*  benchmarks/profile_fine_tune.py: where one fine-tune's and one scoring pass's time goes
#   cycle.*    benchmarks/nightly_cycle.py: two nightly cycles through a Prefect server, the gpu pool's
#              worker and the local-directory store
# STEPS=speed,profile,cycle picks some of them; SPEED_ARGS, PROFILE_ARGS and CYCLE_ARGS add options (e.g.
# smaller sizes for a rehearsal on a CPU: PYTHON=.venv/bin/python SKIP_INSTALL=1 with small sizes).
set -euo pipefail
cd "$(dirname "$0")/../.."
carry=${CARRY:-.bench/gpu}
out=${OUT:-/tmp/gpu-out}
site=${SITE:-/tmp/retrainer-site}
steps=${STEPS:-speed,profile,cycle}
mkdir -p "$out" "$site"
python=${PYTHON:-python3}
if [[ -z "${SKIP_INSTALL:-}" ]]; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --target "$site" "$carry"/wheels/*.whl
fi
export PYTHONPATH="$site:$PWD:$PWD/benchmarks" HF_HUB_OFFLINE=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
base=(--base-model "$carry/minilm" --random-init)
data=()
[[ -f "$carry/issues_train.csv" ]] && data=(--data "$carry/issues_train.csv")
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true) | tee "$out/device.txt"
"$python" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
  | tee -a "$out/device.txt"
step() { [[ ",$steps," == *",$1,"* ]]; }
if step speed; then
  "$python" benchmarks/gpu_speed.py "${base[@]}" "${data[@]}" ${SPEED_ARGS:-} --json "$out/speed.json" 2>&1 \
    | grep -v -e "it/s]" -e "examples/s]" | tee "$out/speed.log"
fi
if step profile; then
  "$python" benchmarks/profile_fine_tune.py "${base[@]}" "${data[@]}" ${PROFILE_ARGS:-} --json "$out/profile.json" 2>&1 \
    | grep -v -e "it/s]" -e "examples/s]" | tee "$out/profile.log"
fi
if step cycle; then
  "$python" benchmarks/nightly_cycle.py "${base[@]}" ${CYCLE_ARGS:-} --workdir /tmp/gpu-cycle --json "$out/cycle.json" 2>&1 \
    | grep -v -e "it/s]" -e "examples/s]" | tee "$out/cycle.log"
  cp /tmp/gpu-cycle/*.log "$out/" 2>/dev/null || true
fi
