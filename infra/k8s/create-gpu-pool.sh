#!/usr/bin/env bash
# Create (or update) the `gpu` work pool as a Kubernetes pool with the GPU job template.
# Needs PREFECT_API_URL (and PREFECT_API_AUTH_STRING when the server has one) in the environment.
# Multi-GPU: set the job variable gpu_count on the deployment or the run (default 1).
set -euo pipefail
cd "$(dirname "$0")/../.."

# `--overwrite` cannot change a pool's type: on an existing *process* pool named gpu (as
# `retrainer setup` creates) Prefect would keep the type and store a template no process worker
# understands. Refuse instead, and say how to switch.
if existing=$(prefect work-pool inspect gpu --output json 2>/dev/null); then
    type=$(printf '%s' "$existing" | python -c 'import json, sys; print(json.load(sys.stdin)["type"])')
    if [ "$type" != "kubernetes" ]; then
        echo "work pool 'gpu' exists with type '$type'; to switch it to Kubernetes, stop its workers," >&2
        echo "run 'prefect work-pool delete gpu', then this script, then redeploy (make deploy)." >&2
        exit 1
    fi
fi

prefect work-pool create gpu --type kubernetes --base-job-template infra/k8s/gpu-base-job-template.json --overwrite
