#!/usr/bin/env bash
# Demo DAQ: an emulator writes a fresh synthetic pair (new noise through the passband, the demo's
# line) every file duration into var/demo-daq, deleting its pairs beyond the newest few, while
# `quax produce --follow` sends each pair once it is complete. Every file is new noise, so the run
# average improves like a real run's (docs/usage.md). Ctrl-C (honcho) stops both.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
daq=${QUAX_DEMO_DAQ:-$repo/var/demo-daq}
files=${QUAX_DEMO_FILES:-100000}
run=${QUAX_DEMO_RUN:-demo-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$daq"
rm -f "$daq"/duck_[iq]_[0-9]*.{dat,tmp}  # an earlier demo's pairs: this run starts with fresh ones
echo "[producer] run $run: a new synthetic pair (2^23 samples each) at ${QUAX_DEMO_PACE:-realtime} pace in $daq"
quax synth --out "$daq" --files "$files" --pace "${QUAX_DEMO_PACE:-realtime}" --keep "${QUAX_DEMO_KEEP:-16}" \
  --seed "$(date +%s)" --tone-hz "${QUAX_DEMO_TONE_HZ:-250000}" \
  --tone-amplitude "${QUAX_DEMO_TONE_AMPLITUDE:-0.02}" >/dev/null &
quax produce --source "$daq" --run "$run" --follow &
# Either one ending (an error, or the emulator's last file) ends the demo's DAQ side, and honcho
# stops the rest: a producer waiting for files that never come would look like a stalled chain.
status=0
wait -n || status=$?
kill $(jobs -p) 2>/dev/null || true
exit $status
