#!/usr/bin/env bash
# scale.sh measures the file store at a year's scale (issue 11): it writes
# logs of 1M and 10M events and of 1 GiB and 10 GiB with `stage4load fill`
# (straight through the store: a gateway would take hours) and a log
# whose only segment is nearly full (the longest start-up verification a log directory can need), then
# times `stage4 serve`'s start-up to SERVING on each and ListAuditEvents
# lookups over gRPC with `stage4load scale`. Results go to OUT/scale-*.txt.
#
# Usage: tools/scale.sh [--out DIR] [--data DIR]
# DIR defaults: bench-out for results, a new temporary directory on the
# work disk for the logs (about 25 GiB: the logs, their trees, indexes and
# preallocated segments), removed at the end. Takes about 15 minutes here.
set -euo pipefail

cd "$(dirname "$0")/.."

OUT=bench-out DATA=''
while [[ $# -gt 0 ]]; do
	case $1 in
	--out) OUT=$2; shift ;;
	--data) DATA=$2; shift ;;
	*) echo "usage: tools/scale.sh [--out DIR] [--data DIR]" >&2; exit 2 ;;
	esac
	shift
done
BIN_DIR=${BIN_DIR:-bin}
mkdir -p "$OUT" "$BIN_DIR"
if [[ -z $DATA ]]; then
	DATA=$(mktemp -d "${TMPDIR:-/var/tmp}/stage4-scale-XXXXXX")
	trap 'rm -rf "$DATA"' EXIT
fi
go build -o "$BIN_DIR/stage4" ./cmd/stage4
go build -o "$BIN_DIR/stage4load" ./cmd/stage4load

fill() { # name, fill arguments...
	local name=$1
	shift
	[[ -e $DATA/$name ]] || "$BIN_DIR/stage4load" fill --audit-log "$DATA/$name" "$@" 2>/dev/null | tee -a "$OUT/scale-fill.txt"
}
fill ev1m --events 1000002
fill ev10m --events 10000002
fill gib1 --bytes 1073741824
fill gib10 --bytes 10737418240
# 123000 events of ~540 bytes stay just under one 64 MiB segment.
fill full-active --events 123000

for name in ev1m ev10m gib1 gib10 full-active; do
	echo "== $name" >&2
	"$BIN_DIR/stage4load" scale --stage4 "$BIN_DIR/stage4" --audit-log "$DATA/$name" --lookups 200 | tee "$OUT/scale-$name.txt"
done
