#!/usr/bin/env bash
# Prepare, where the project is installed (make test or make demo made .venv), what a GPU host without a
# package index needs for benchmarks/gpu/run.sh, in .bench/gpu (git-ignored, ~38 MB, under the 64 MiB a
# run may carry): a wheelhouse of the dependencies a CUDA image lacks, the base model's config and
# tokenizer (not its weights: speed does not depend on them), and the NLBSE'24 issues when given.
#
# Usage: benchmarks/gpu/prepare.sh [WHEELHOUSE_SCRIPT] [ISSUES_CSV]
#   WHEELHOUSE_SCRIPT: a make_wheelhouse.sh (OUT_DIR argument) as this workplace keeps it in
#   ../shared/gpu/ (default), or any script that fills OUT_DIR with the wheels the host lacks.
#   ISSUES_CSV: the NLBSE'24 issues_train.csv (default ../shared/data/nlbse24/issues_train.csv; skipped
#   when absent: the issue cases are then left out of the run).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
out=$root/.bench/gpu
wheelhouse_script=${1:-../shared/gpu/make_wheelhouse.sh}
issues=${2:-../shared/data/nlbse24/issues_train.csv}
mkdir -p "$out"
if [[ ! -d "$out/wheels" ]]; then
  bash "$wheelhouse_script" "$out/wheels"  # an absolute path: the script changes directory
fi
rm -rf "$out/minilm"
.venv/bin/python - "$out/minilm" <<'PY'
import shutil, sys
from pathlib import Path
from retrainer.core.training import resolve_base_model
from retrainer.settings import PACKAGED_BASE_MODEL
source, target = Path(resolve_base_model(PACKAGED_BASE_MODEL)), Path(sys.argv[1])
target.mkdir(parents=True)
for path in source.iterdir():  # everything but the weights
    if path.is_file() and not path.name.endswith((".safetensors", ".bin", ".pt", ".onnx", ".h5")):
        shutil.copy2(path, target / path.name)
PY
if [[ -f "$issues" ]]; then cp "$issues" "$out/issues_train.csv"; else echo "no $issues: issue cases skipped"; fi
du -sh "$out"
