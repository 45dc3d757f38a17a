# quax-stream: `make demo` runs the live chain on synthetic data; `make test` runs the tests.
SHELL := /bin/bash
VENV := .venv/bin
export PATH := $(CURDIR)/.venv/bin:$(PATH)

.PHONY: setup demo test test-fast test-unit bench clean-var

setup:
	@ops/setup.sh

## The live demo: broker, four Faust workers, the DAQ emulator at real-time pace (Ctrl-C stops all).
demo: setup
	@ops/demo.sh

## The test suite, against a real broker the fixtures start on 127.0.0.1 (ops/test.sh: three
## pytest-xdist workers, each with its own broker, side by side).
test: setup
	@ops/test.sh $(PYTEST_ARGS)

## Everything but the tests marked slow (fault drills, memory soak, cluster, Spark, browser):
## the unit tests and the short broker tests, a few minutes.
test-fast: setup
	$(VENV)/python -m pytest -ra -m "not slow" $(PYTEST_ARGS)

## Only the tests that need no broker (pure logic, seconds to a minute).
test-unit: setup
	$(VENV)/python -m pytest -ra -m "not broker" $(PYTEST_ARGS)

## The speed of the whole chain on this machine (not part of `make test`; docs/performance.md).
bench: setup
	$(VENV)/quax bench $(BENCH_ARGS)

clean-var:
	rm -rf var/kafka var/workers var/demo-daq var/prometheus var/bench var/bench-daq
