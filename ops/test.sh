#!/usr/bin/env bash
# `make test`: the whole suite in two pytest-xdist workers side by side. Most of a broker test's
# time is waiting (for brokers, workers, session timeouts), so two at a time roughly halve the wall
# time on two cores. Each worker process starts its own broker (the session fixture in
# tests/conftest.py); a test file's tests stay in one worker (--dist loadfile: module fixtures are
# built once). Extra pytest arguments go to pytest, e.g. PYTEST_ARGS="-k metadata" or "-n 0" (one
# process, as a debugger wants).
set -uo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m pytest -ra --durations=15 -n 2 --dist loadfile "$@"
