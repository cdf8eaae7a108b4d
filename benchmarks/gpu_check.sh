#!/usr/bin/env bash
# The GPU check in one command (docs/streaming.md): run from anywhere on a CUDA machine whose Python has
# torch (torchvision optional, for GPU JPEG decoding); installs nothing. Writes ONE JSON to
# $OUT/gpu_check.json when OUT is set, else ./gpu_check.json. Extra arguments go to gpu_check.py
# (e.g. --cpu-dry for the CPU rehearsal, --only env resnet50_step, --budget 300); PYTHON picks the interpreter.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
out="${OUT:-.}/gpu_check.json"
mkdir -p "$(dirname "$out")"
# The script keeps its own 450 s budget; this is the hard stop under the 8 minutes (the CPU rehearsal: 25).
limit=465
case " $* " in *" --cpu-dry "*) limit=1530 ;; esac
timeout --signal=TERM --kill-after=15 "$limit" "${PYTHON:-python3}" benchmarks/gpu_check.py --out "$out" "$@"
status=$?
echo "gpu_check.sh: exit $status, results in $out"
exit $status
