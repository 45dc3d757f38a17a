#!/usr/bin/env bash
# `make test`: the whole suite in three pytest-xdist workers side by side. Most of a broker test's
# time is waiting (for brokers, workers, session timeouts), so three at a time on two cores take
# 11.7 min where two took 13.4 and one after the other 16-18 (docs/reliability.md, "The suite
# itself"). Each worker process starts its own broker (the session fixture in tests/conftest.py); a
# test file's tests stay in one worker (--dist loadfile: module fixtures are built once), the
# longest files first. Extra pytest arguments go to pytest, e.g. PYTEST_ARGS="-k metadata" or "-n 0" (one
# process, as a debugger wants).
set -uo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m pytest -ra --durations=15 -n 3 --dist loadfile "$@"
