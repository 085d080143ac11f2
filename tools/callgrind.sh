#!/usr/bin/env bash
# callgrind.sh counts the user-space instructions that a gateway process
# executes per ExecutePlan, with valgrind's callgrind: stage4 serve (the
# default) or, with --proxy, the load tool's bare proxy. Unlike CPU time,
# the count hardly moves with what else the machine is doing (about 1%
# between runs here), so it compares two builds on a shared machine. It
# leaves out the kernel (write, fsync and network syscalls), and valgrind
# runs SHA-256 without the SHA extensions, which makes the audit log's
# hashing count several times what it costs natively.
#
# Usage: tools/callgrind.sh [--proxy] [--bin STAGE4] [--calls N] [--concurrency C]
# Defaults: bin/stage4 built from this tree, 1000 calls from 64 callers,
# after 200 calls of warm-up that are not counted. Needs valgrind.
set -euo pipefail

cd "$(dirname "$0")/.."

kind=stage4 bin='' calls=1000 conc=64
while [[ $# -gt 0 ]]; do
	case $1 in
	--proxy) kind=proxy ;;
	--bin) bin=$2; shift ;;
	--calls) calls=$2; shift ;;
	--concurrency) conc=$2; shift ;;
	*) echo "usage: tools/callgrind.sh [--proxy] [--bin STAGE4] [--calls N] [--concurrency C]" >&2; exit 2 ;;
	esac
	shift
done
command -v valgrind >/dev/null || { echo "callgrind.sh: valgrind is not installed" >&2; exit 2; }

work=$(mktemp -d)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

if [[ -z $bin ]]; then
	go build -o "$work/stage4" ./cmd/stage4
	bin=$work/stage4
fi
go build -o "$work/stage4load" ./cmd/stage4load

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
s3=127.0.0.1:$(port) gw=127.0.0.1:$(port)
wait_port() {
	for _ in $(seq 300); do
		(exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null && return 0
		sleep 0.1
	done
	echo "callgrind.sh: nothing listens on $1" >&2
	return 1
}

"$bin" reference-stage3 --listen "$s3" --log-level warn >"$work/stage3.log" 2>&1 &
pids+=($!)
wait_port "$s3"
if [[ $kind == stage4 ]]; then
	args=(serve --listen "$gw" --stage3-addr "$s3" --stage3-insecure --audit-log "$work/audit"
		--metrics-listen 127.0.0.1:0 --log-level info)
	target=$bin
else
	args=(proxy --listen "$gw" --stage3-addr "$s3")
	target=$work/stage4load
fi
# Instrumentation starts off (start-up is not counted); asynchronous
# preemption's signals would only slow valgrind down.
GODEBUG=asyncpreemptoff=1 valgrind --tool=callgrind --instr-atstart=no \
	--callgrind-out-file="$work/callgrind.out" "$target" "${args[@]}" >"$work/gateway.log" 2>&1 &
gwpid=$!
pids+=("$gwpid")
wait_port "$gw"

"$work/stage4load" calls --addr "$gw" --n 200 --concurrency "$conc" >/dev/null
callgrind_control -i on "$gwpid" >/dev/null 2>&1
"$work/stage4load" calls --addr "$gw" --n "$calls" --concurrency "$conc" >&2
callgrind_control -i off "$gwpid" >/dev/null 2>&1
callgrind_control -d "$gwpid" >/dev/null 2>&1

total=$(cat "$work"/callgrind.out.* | awk '/^(summary|totals):/ {s += $2} END {print s}')
echo "$kind ($target): $((total / calls)) instructions per ExecutePlan ($calls calls from $conc callers)"
