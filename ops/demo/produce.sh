#!/usr/bin/env bash
# Demo DAQ emulator: synthetic file pairs (made once in var/demo-daq), sent at real-time pace,
# looping over them with new file numbers so the run goes on until Ctrl-C.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
daq=${QUAX_DEMO_DAQ:-$repo/var/demo-daq}
files=${QUAX_DEMO_FILES:-8}
if [[ ! -f $daq/duck_q_$(printf %05d $((files - 1))).dat ]]; then
  echo "[producer] writing $files synthetic file pairs (2^23 samples each) into $daq"
  quax synth --out "$daq" --files "$files" --tone-hz "${QUAX_DEMO_TONE_HZ:-250000}" \
    --tone-amplitude "${QUAX_DEMO_TONE_AMPLITUDE:-0.02}"
fi
run=${QUAX_DEMO_RUN:-demo-$(date -u +%Y%m%d-%H%M%S)}
echo "[producer] run $run: sending $daq at ${QUAX_DEMO_PACE:-realtime} pace"
exec quax produce --source "$daq" --run "$run" --pace "${QUAX_DEMO_PACE:-realtime}" --loop "${QUAX_DEMO_LOOPS:-10000}"
