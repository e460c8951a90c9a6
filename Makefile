# Ferry's two commands: `make demo` runs the main job, `make test` the tests.
# Both install what they need first (scripts/setup.sh: idempotent, quick when done).

SHELL := /bin/bash
GO ?= go
export PATH := $(PATH):/usr/local/go/bin:$(shell $(GO) env GOPATH 2>/dev/null)/bin
BIN := bin/ferry

.PHONY: all setup build test test-short demo lint fuzz bench faults clean

all: build

setup:
	@bash scripts/setup.sh

build:
	$(GO) build -o $(BIN) ./cmd/ferry

# The whole suite with the race detector. PostgreSQL and the S3-compatible
# server are started by scripts/test-services.sh so the conformance suites
# run against the real thing; FERRY_TEST_REQUIRE_ALL=1 turns any skipped
# integration test into a failure.
test: setup
	@mkdir -p bin; rm -f bin/faults-summary.txt; . scripts/test-services.sh && \
	  FERRY_FAULTS_SUMMARY=$(CURDIR)/bin/faults-summary.txt $(GO) test -race -count=1 -timeout 30m ./...; rc=$$?; \
	  if [ -s bin/faults-summary.txt ]; then echo "== fault-injection summary"; cat bin/faults-summary.txt; fi; exit $$rc

test-short:
	$(GO) test -short -count=1 ./...

lint:
	$(GO) vet ./...
	staticcheck ./...
	@test -z "$$(gofmt -l .)" || { echo "gofmt needed:"; gofmt -l .; exit 1; }

# Run every fuzz target for FUZZTIME each (default 30s).
FUZZTIME ?= 30s
fuzz:
	@bash scripts/fuzz.sh $(FUZZTIME)

# The fault-injection suite's soak (root): an hour of rounds instead of the
# 50 faults of every kind that `make test` injects.
faults: setup
	@. scripts/test-services.sh && FERRY_SOAK=1 $(GO) test -race -count=1 -timeout 90m -v -run 'TestFaultInjection' ./faults

# Benchmarks print figures; they are not tests. `ferry bench all` (root)
# runs every section, prints one table against bench/reference.json and
# writes the run to bin/bench.json and bin/bench.svg; a full run takes
# about 15 minutes on 2 cores, BENCHFLAGS=--quick under 3. Add
# --fail-on-regression to exit non-zero on a figure 10 % worse.
BENCHFLAGS ?=
bench: setup build
	$(BIN) bench all --json bin/bench.json --svg bin/bench.svg $(BENCHFLAGS)

demo: setup build
	@bash scripts/demo.sh

clean:
	rm -rf bin
