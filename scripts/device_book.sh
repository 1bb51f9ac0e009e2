#!/usr/bin/env bash
# On the GPU machine (the device tool): the book's GPU work in one call. Installs the carried Jupyter wheels
# (.whl/, the device has no jupyter), unpacks data and run store (scripts/device_env.sh), finishes the
# protocol within PROTOCOL_SECONDS (0: skip), executes the given chapters with the inline backend
# (scripts/execute_notebooks.py, offline profile, cuda), and packs notebooks + run store for the trip back.
# Usage: bash scripts/device_book.sh PROTOCOL_SECONDS notebooks/01_continual_learning.ipynb ...
set -uo pipefail
LIMIT=${1:-0}; shift
if [ -z "${SKIP_WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
source scripts/device_env.sh
if [ "$LIMIT" -gt 0 ]; then
  python3 -m cl_peft_lib protocol --profile offline --root runs --gpus ${SLOTS:-0,0,0,0,0,0,0,0,0,0,0,0} \
    --time-limit "$LIMIT" 2>&1 | tee "$OUT/protocol.log" | grep -v "^\[" | tail -30
  python3 -m cl_peft_lib protocol --profile offline --root runs --export "$OUT/offline_protocol.json"
fi
t0=$(date +%s)
python3 scripts/execute_notebooks.py --profile offline --device "${DEVICE:-cuda}" --timeout "${CELL_TIMEOUT:-540}" "$@" 2>&1 \
  | grep -v "WARNING | Kernel is running over TCP" | tee "$OUT/execute.log"
echo "chapters wall: $(( $(date +%s) - t0 )) s"
tar -cJf "$OUT/notebooks.tar.xz" "$@"
tar -cJf /tmp/runs.tar.xz --exclude=checkpoint.pt runs && split -b 15M /tmp/runs.tar.xz "$OUT/runs.tar.xz."
ls -la "$OUT"
