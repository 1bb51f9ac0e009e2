# Sourced by the device scripts (scripts/device_protocol.sh, scripts/device_book.sh) on the GPU machine:
# unpack the carried offline data (.carry/offline.tar.xz, made here by `cl-peft data export` + xz) and, when
# no run store is there yet, the carried one (.carry/runs.tar.xz: results, selections, grid summaries).
mkdir -p /tmp/off && tar -xJf .carry/offline.tar.xz -C /tmp/off && gzip -f -1 /tmp/off/fashion_mnist/*ubyte /tmp/off/mnist/*ubyte
# no run store carried: start from the packaged protocol results (selections are kept, finished runs skipped)
export CL_PEFT_OFFLINE_DATA=/tmp/off PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if [ -f .carry/runs.tar.xz ] && [ ! -d runs/offline ]; then tar -xJf .carry/runs.tar.xz; fi
# BUNDLE: another bundle to start from, e.g. .carry/defaults_view.json (the defaults view alone: re-tune everything)
if [ ! -d runs/offline ]; then python3 -m cl_peft_lib protocol --profile offline --root runs \
  --import "${BUNDLE:-cl_peft_lib/records/offline_protocol.json}"; fi
