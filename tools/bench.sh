#!/usr/bin/env bash
# bench.sh measures Stage-4 and writes the results into a directory of its
# own: the Go micro-benchmarks first, then the load tool (cmd/stage4load),
# which compares direct Stage-3 calls, a bare proxy and the real stage4
# process on loopback (closed loop, then open loop at fixed rates), the same
# with its audit log in PostgreSQL (one replica, and two on one database),
# CPU-profiles the proxy and stage4, checks ExecutePlan against plan size,
# runs a soak for stage4's memory, and measures ExecutePlan while heavy
# audit readers run, with serve's limits on audit reads and without them.
# `make bench` calls it.
#
# Usage:
#   tools/bench.sh [--out DIR]   measure; write DIR (default bench-out)
#   tools/bench.sh --publish DIR make DIR's report docs/PERFORMANCE.md
#
# A run never touches docs/: publishing a run is a deliberate step. It
# copies DIR/PERFORMANCE.md and DIR/performance.json into docs/ and keeps
# what follows the notes marker in docs/PERFORMANCE.md (the analysis written
# by hand about the published run), which is then to be brought up to date.
#
# DIR receives PERFORMANCE.md (the report), performance.json (every raw
# figure), gobench.txt, proxy-cpu.pprof and stage4-cpu.pprof (open with
# `go tool pprof -http=: FILE`), their -top.txt summaries, and logs/ (the
# servers' logs).
#
# Budget on a 2-core machine, under 10 minutes:
#   go benchmarks: compile + BENCHTIME per benchmark   ~1-3 min
#   closed loop: 3 rounds x 4 configs x 3 concurrencies x (1 s + 3 s)  ~145 s
#     (a, b, c, and c again with a request_id on every call)
#   PostgreSQL: 3 rounds x 3 configs x 3 concurrencies x (1 s + 3 s)   ~110 s
#     (d, d with request_id, e)
#   open loop: 3 rounds x 2 rates x 2 configs x (0.5 s + 5 s)          ~70 s
#   profiles: 2 x (1 s + 10.5 s)   ~25 s
#   plan size: 4 sizes x (0.5 s + 3 s)   ~15 s
#   soak: 30 s
#   audit readers: fill + copy a 300k-event log ~10 s, 2 start-ups,
#     3 rounds x 3 configs x (1 s + 3 s)   ~50 s
# Environment overrides: BENCHTIME (default 200ms), SOAK (default 30s),
# ROUNDS (default 3), DURATION (default 3s), OPEN_FRACTIONS (default
# 0.5,0.8 of stage4's closed-loop maximum at 64 callers; empty skips the
# open loop), OPEN_DURATION (default 5s), PROFILE_DURATION (default 10s; 0
# skips the profiles), APPEND_PAIRS (default 6: extra runs of the durable
# and volatile BenchmarkAppend at 64 writers), BIN_DIR (default bin), PG_CONCURRENCY (default
# 1,16,64; empty leaves PostgreSQL out), READERS_RECORDS (default 300000:
# events in the log of the audit readers measurement; 0 skips it),
# READERS_DURATION (default 3s: its measured time per configuration and
# round, of ROUNDS rounds), STAGE4_TEST_POSTGRES_URL (the server
# on which the run creates and drops its databases; default
# postgres://postgres@127.0.0.1:5432/postgres).
set -euo pipefail

cd "$(dirname "$0")/.."

# notes_marker separates the generated report from the notes kept by hand
# in docs/PERFORMANCE.md.
notes_marker='<!-- Notes below are written by hand and kept by tools/bench.sh --publish. -->'

publish() {
	local dir=$1
	[[ -f $dir/PERFORMANCE.md && -f $dir/performance.json ]] || {
		echo "bench.sh: $dir holds no report of a run (PERFORMANCE.md, performance.json)" >&2
		exit 2
	}
	local notes=''
	if [[ -f docs/PERFORMANCE.md ]] && grep -qxF -- "$notes_marker" docs/PERFORMANCE.md; then
		notes=$(sed -n "/^$(printf '%s' "$notes_marker" | sed 's/[][\.*^$/]/\\&/g')\$/,\$p" docs/PERFORMANCE.md | tail -n +2)
	fi
	{
		cat "$dir/PERFORMANCE.md"
		printf '\n%s\n' "$notes_marker"
		printf '%s\n' "$notes"
	} >docs/PERFORMANCE.md.tmp
	mv docs/PERFORMANCE.md.tmp docs/PERFORMANCE.md
	cp "$dir/performance.json" docs/performance.json
	echo "== published $dir into docs/PERFORMANCE.md and docs/performance.json; bring the notes at its end up to date" >&2
}

OUT=bench-out
case ${1:-} in
--publish)
	[[ $# -eq 2 ]] || { echo "usage: tools/bench.sh --publish DIR" >&2; exit 2; }
	publish "$2"
	exit 0
	;;
--out)
	[[ $# -eq 2 ]] || { echo "usage: tools/bench.sh [--out DIR]" >&2; exit 2; }
	OUT=$2
	;;
'') ;;
*)
	echo "usage: tools/bench.sh [--out DIR] | --publish DIR" >&2
	exit 2
	;;
esac

BENCHTIME=${BENCHTIME:-200ms}
SOAK=${SOAK:-30s}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-3s}
OPEN_FRACTIONS=${OPEN_FRACTIONS-0.5,0.8}
OPEN_DURATION=${OPEN_DURATION:-5s}
PROFILE_DURATION=${PROFILE_DURATION:-10s}
APPEND_PAIRS=${APPEND_PAIRS:-6}
BIN_DIR=${BIN_DIR:-bin}
PG_CONCURRENCY=${PG_CONCURRENCY-1,16,64}
READERS_RECORDS=${READERS_RECORDS:-300000}
READERS_DURATION=${READERS_DURATION:-3s}

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

echo "== building $BIN_DIR/stage4 and $BIN_DIR/stage4load" >&2
go build -o "$BIN_DIR/stage4" ./cmd/stage4
go build -o "$BIN_DIR/stage4load" ./cmd/stage4load

echo "== go micro-benchmarks (-benchtime $BENCHTIME)" >&2
# A failed benchmark fails the script (pipefail); its output is still shown.
go test -run '^$' -bench . -benchmem -benchtime "$BENCHTIME" -timeout 5m ./... | tee "$OUT/gobench.txt"
# The durable-append target compares fsync=true with fsync=false at 64
# writers. go test -count would run each of them n times in a row; running
# the test binary n times runs the pair n times, so that each pair meets the
# same machine, and the report takes the median of the pairs' ratios.
echo "== durable against volatile appends at 64 writers, ${APPEND_PAIRS} more pairs" >&2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
go test -c -o "$work/segstore.test" ./audit/segstore
for _ in $(seq "$APPEND_PAIRS"); do
	(cd audit/segstore && "$work/segstore.test" -test.run '^$' -test.bench '^BenchmarkAppend$/^fsync=/^writers=64$' \
		-test.benchmem -test.benchtime "$BENCHTIME") | grep -v '^PASS$' | tee -a "$OUT/gobench.txt"
done

profile_args=()
if [[ $PROFILE_DURATION != 0 && $PROFILE_DURATION != 0s ]]; then
	profile_args=(--profile-dir "$OUT" --profile-duration "$PROFILE_DURATION")
fi

echo "== load: direct vs proxy vs stage4 (file; PostgreSQL at '${PG_CONCURRENCY}' callers; each with and without request_id), open loop at '${OPEN_FRACTIONS}', profiles, plan size, ${SOAK} soak, audit readers on ${READERS_RECORDS} events" >&2
"$BIN_DIR/stage4load" \
	--stage4-bin "$BIN_DIR/stage4" \
	--rounds "$ROUNDS" \
	--duration "$DURATION" \
	--open-fractions "$OPEN_FRACTIONS" \
	--open-duration "$OPEN_DURATION" \
	"${profile_args[@]}" \
	--soak "$SOAK" \
	--pg-concurrency "$PG_CONCURRENCY" \
	--readers-records "$READERS_RECORDS" \
	--readers-rounds "$ROUNDS" \
	--readers-duration "$READERS_DURATION" \
	--request-id \
	--gobench "$OUT/gobench.txt" \
	--work-dir "$OUT/logs" \
	--out "$OUT/PERFORMANCE.md" \
	--json "$OUT/performance.json"

if [[ ${#profile_args[@]} -gt 0 ]]; then
	{
		printf '\n## Profile top entries\n\nOf the profiles above, by own (flat) CPU time: `go tool pprof -top -nodecount=25 FILE`.\n'
		for name in stage4 proxy; do
			go tool pprof -top -nodecount=25 "$BIN_DIR/$([[ $name == proxy ]] && echo stage4load || echo stage4)" \
				"$OUT/$name-cpu.pprof" 2>/dev/null >"$OUT/$name-cpu-top.txt"
			printf '\n%s-cpu.pprof:\n\n```\n' "$name"
			sed -n '/flat%/,$p' "$OUT/$name-cpu-top.txt"
			printf '```\n'
		done
	} >>"$OUT/PERFORMANCE.md"
fi

echo "== wrote $OUT (report: $OUT/PERFORMANCE.md); publish it with: make bench-publish OUT=$OUT" >&2
