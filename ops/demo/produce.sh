#!/usr/bin/env bash
# Demo DAQ: a haloscope campaign at real-time pace. An emulator (`quax synth-campaign --pace`) steps
# the cavity: run k has its LO 77 bins (50 kHz) above run k-1's and the cavity 200 kHz above its LO,
# and writes a fresh synthetic pair (new noise through the passband, the demo's tone, and the demo's
# axion where the run's band reaches it) every file duration into var/demo-daq/<run>/, after the
# run's metadata (run.toml); it deletes each run's pairs beyond the newest few. For each run in turn,
# `quax produce --follow --meta-file` sends its pairs with its metadata, and stops once the emulator
# has moved on to the next run. Every file is new noise, so each run's average improves like a real
# run's, and the live campaign (`quax campaign-live`, the dashboard's campaign page) grows step by step.
# docs/usage.md, "make demo". Ctrl-C (honcho) stops both.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
daq=${QUAX_DEMO_DAQ:-$repo/var/demo-daq}
steps=${QUAX_DEMO_STEPS:-100}
per_step=${QUAX_DEMO_FILES_PER_STEP:-36}
run=${QUAX_DEMO_RUN:-demo-$(date -u +%Y%m%d-%H%M%S)}
axion=${QUAX_DEMO_AXION-10400400000:400}
mkdir -p "$daq"
# An earlier demo's pairs: this campaign starts with fresh ones (only DAQ pairs and run files are deleted).
find "$daq" -maxdepth 2 \( -name 'duck_[iq]_[0-9]*.dat' -o -name 'duck_[iq]_[0-9]*.tmp' -o -name run.toml \) -delete
echo "[producer] campaign $run: $steps runs of $per_step pairs (2^23 samples each) at ${QUAX_DEMO_PACE:-realtime} pace in $daq," \
     "axion ${axion:-none} (FREQ_HZ:(g/g_KSVZ)^2)"
quax synth-campaign --out "$daq" --runs "$steps" --files "$per_step" --pace "${QUAX_DEMO_PACE:-realtime}" \
  --keep "${QUAX_DEMO_KEEP:-16}" --seed "$(date +%s)" --run-prefix "$run-s" \
  --tone-hz "${QUAX_DEMO_TONE_HZ:-830000}" --tone-amplitude "${QUAX_DEMO_TONE_AMPLITUDE:-0.02}" \
  ${axion:+--axion "$axion"} >/dev/null &
emulator=$!
producers=()
stop() { kill "$emulator" "${producers[@]}" 2>/dev/null || true; exit "$1"; }  # honcho then stops the rest
check() {  # a producer that failed ends the demo's DAQ side; those that finished are forgotten
  local pid running=()
  for pid in "${producers[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then running+=("$pid")
    else wait "$pid" || { echo "[producer] a producer failed"; stop 1; }; fi
  done
  producers=("${running[@]}")
}
for ((k = 0; k < steps; k++)); do
  name=$(printf '%s-s%03d' "$run" "$k")
  while [[ ! -f $daq/$name/run.toml ]]; do  # the emulator writes a run's metadata before its pairs
    check
    kill -0 "$emulator" 2>/dev/null || { status=0; wait "$emulator" || status=$?; echo "[producer] the emulator stopped"; stop $status; }
    sleep 0.5
  done
  # Each run's producer starts before its first pair and ends 30 s after its last one, when the
  # emulator has long moved on to the next run (whose producer is already following it). Once
  # every pair of the run is sent and acked, its pairs are deleted: a week-long demo keeps only
  # the newest pairs of the runs in progress on disk (64 MB each).
  (quax produce --source "$daq/$name" --run "$name" --meta-file "$daq/$name/run.toml" --follow --idle-exit 30 \
     && rm -f "$daq/$name"/duck_[iq]_[0-9]*.dat) &
  producers+=($!)
done
status=0
wait "$emulator" || status=$?
for pid in "${producers[@]}"; do wait "$pid" || status=$?; done
exit $status
