#!/usr/bin/env bash
# `make test`: the whole suite as two pytest processes side by side. The tests that need a broker
# (most of the time: waiting for brokers, workers and timeouts) run in the foreground; those that
# need none (CPU for ~90 s: fuzzing, the search's statistics) run beside them, their report printed
# after. Every test runs; the exit code is non-zero if either run failed. Extra pytest arguments
# (PYTEST_ARGS) go to both; a selection with no test for one of them is not a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
mkdir -p var
unit_log=var/test-no-broker.log

"$py" -m pytest -ra -m "not broker" -p no:cacheprovider "$@" >"$unit_log" 2>&1 &
unit=$!
"$py" -m pytest -ra -m broker --durations=15 "$@"
broker_rc=$?
wait "$unit"
unit_rc=$?
echo
echo "=== the tests that need no broker (run beside the others; $unit_log) ==="
tail -n 40 "$unit_log"
ok() { [ "$1" -eq 0 ] || [ "$1" -eq 5 ]; }  # 5: pytest collected nothing for this half
if ok "$broker_rc" && ok "$unit_rc" && ! { [ "$broker_rc" -eq 5 ] && [ "$unit_rc" -eq 5 ]; }; then
  echo "make test: both halves passed"
  exit 0
fi
echo "make test: FAILED (tests needing a broker: exit $broker_rc; the others: exit $unit_rc)"
exit 1
