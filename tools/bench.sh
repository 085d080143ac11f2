#!/usr/bin/env bash
# bench.sh measures Stage-4 and writes docs/PERFORMANCE.md and
# docs/performance.json: the Go micro-benchmarks first, then the load tool
# (cmd/stage4load), which compares direct Stage-3 calls, a bare proxy and the
# real stage4 process on loopback, the same with its audit log in PostgreSQL
# (one replica, and two on one database), checks ExecutePlan against plan
# size and runs a soak for stage4's memory. `make bench` calls it.
#
# Budget on a 2-core machine, well under 10 minutes:
#   go benchmarks: compile + BENCHTIME per benchmark   ~1-3 min
#   closed loop: 3 rounds x 3 configs x 3 concurrencies x (1 s + 3 s)  ~110 s
#   PostgreSQL: 3 rounds x 2 configs x 2 concurrencies x (1 s + 3 s)   ~50 s
#   plan size: 4 sizes x (0.5 s + 3 s)   ~15 s
#   soak: 60 s
# Environment overrides: BENCHTIME (default 200ms), SOAK (default 60s),
# ROUNDS (default 3), DURATION (default 3s), OUT_DIR (default docs),
# BIN_DIR (default bin), PG_CONCURRENCY (default 16,64; empty leaves
# PostgreSQL out), STAGE4_TEST_POSTGRES_URL (the server on which the run
# creates and drops its databases; default
# postgres://postgres@127.0.0.1:5432/postgres).
set -euo pipefail

cd "$(dirname "$0")/.."

BENCHTIME=${BENCHTIME:-200ms}
SOAK=${SOAK:-60s}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-3s}
OUT_DIR=${OUT_DIR:-docs}
BIN_DIR=${BIN_DIR:-bin}
PG_CONCURRENCY=${PG_CONCURRENCY-16,64}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== building $BIN_DIR/stage4 and $BIN_DIR/stage4load" >&2
go build -o "$BIN_DIR/stage4" ./cmd/stage4
go build -o "$BIN_DIR/stage4load" ./cmd/stage4load

echo "== go micro-benchmarks (-benchtime $BENCHTIME)" >&2
# A failed benchmark fails the script (pipefail); its output is still shown.
go test -run '^$' -bench . -benchmem -benchtime "$BENCHTIME" -timeout 5m ./... | tee "$work/gobench.txt"

echo "== load: direct vs proxy vs stage4 (file; PostgreSQL at '${PG_CONCURRENCY}' callers), plan size, ${SOAK} soak" >&2
mkdir -p "$OUT_DIR"
"$BIN_DIR/stage4load" \
	--stage4-bin "$BIN_DIR/stage4" \
	--rounds "$ROUNDS" \
	--duration "$DURATION" \
	--soak "$SOAK" \
	--pg-concurrency "$PG_CONCURRENCY" \
	--gobench "$work/gobench.txt" \
	--out "$OUT_DIR/PERFORMANCE.md" \
	--json "$OUT_DIR/performance.json"

echo "== wrote $OUT_DIR/PERFORMANCE.md and $OUT_DIR/performance.json" >&2
