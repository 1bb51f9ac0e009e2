#!/usr/bin/env bash
# On the GPU machine (the device tool): unpack the carried offline data, run `cl-peft protocol`
# (tune + tuned head-to-head + reference defaults) with $SLOTS runs at a time on GPU 0 (default 8), and pack the
# run store for the trip back (no checkpoints). Usage: bash scripts/device_protocol.sh SECONDS
# METHODS: passed to --methods (e.g. paper-methods: the protocol without the methods after the paper)
set -uo pipefail
LIMIT=${1:-480}
source scripts/device_env.sh
nvidia-smi --query-gpu=name,memory.used --format=csv
t0=$(date +%s)
python3 -m cl_peft_lib protocol --profile offline --root runs --gpus ${SLOTS:-0,0,0,0,0,0,0,0} --time-limit "$LIMIT" ${METHODS:+--methods "$METHODS"} 2>&1 \
  | tee "$OUT/protocol.log" | grep -v "^\[" | tail -60
echo "protocol wall: $(( $(date +%s) - t0 )) s"
cat runs/offline/protocol_timing.json 2>/dev/null | tail -c 600
python3 -m cl_peft_lib protocol --profile offline --root runs --export "$OUT/offline_protocol.json" 2>&1 | tail -2
# results, logs, selections and grid summaries (no checkpoints), in pieces under the 16 MB return limit
tar -cJf /tmp/runs.tar.xz --exclude=checkpoint.pt runs && split -b 15M /tmp/runs.tar.xz "$OUT/runs.tar.xz." && ls -la "$OUT"
