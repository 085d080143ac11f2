#!/usr/bin/env bash
# examples.sh runs one client of examples/ against a running Stage-4:
#
#   tools/examples.sh go|typescript|python [HOST:PORT]
#
# HOST:PORT defaults to 127.0.0.1:50051, where make run listens. make
# example-go, example-typescript and example-python call it, and so do the
# tests of cmd/stage4 (examples_test.go), against a stage4 dev of their own.
#
#   tools/examples.sh status
#
# says which examples the tests will run and which they will skip, and
#
#   tools/examples.sh deps
#
# installs what the TypeScript and Python examples need and the machine
# lacks: Python's grpcio and grpc_tools from Debian's packages (as root),
# and the npm packages of examples/typescript.
#
# Exit status: 0 the example ran, 1 it failed, 3 a tool it needs is missing
# (it says which and how to get it): the tests skip on 3, or fail under CI.
set -euo pipefail
cd "$(dirname "$0")/.."

lang=${1:-}
addr=${2:-127.0.0.1:50051}
ts=examples/typescript

missing() {
  echo "examples.sh: cannot run the $lang example: $*" >&2
  exit 3
}

have() { command -v "$1" >/dev/null 2>&1; }

# step says what comes next on stderr, so that the slow first run (npm
# packages, Go building buf) does not look like a hang.
step() { echo "examples.sh: $*..." >&2; }

# python_with_grpc prints the first Python that can import grpc and
# grpc_tools: $PYTHON, python3 on PATH, then Debian's /usr/bin/python3,
# which is the one Debian's python3-grpcio installs into even where a
# pyenv or venv python3 comes first on PATH.
python_with_grpc() {
  local py
  for py in ${PYTHON:-} python3 /usr/bin/python3; do
    if have "$py" && "$py" -c 'import grpc, grpc_tools.protoc' 2>/dev/null; then
      echo "$py"
      return 0
    fi
  done
  return 1
}

# npm_ci installs examples/typescript's packages when package-lock.json
# changed since the last install (npm ci wipes node_modules every time).
npm_ci() {
  if [ ! -f $ts/node_modules/.package-lock.json ] || [ $ts/package-lock.json -nt $ts/node_modules/.package-lock.json ]; then
    step "installing the npm packages of $ts (npm ci; about a minute, once)"
    (cd $ts && npm ci --no-audit --no-fund)
  fi
}

case $lang in
go)
  step "building and running the Go client against $addr"
  go run ./examples/go --addr "$addr"
  ;;
typescript)
  have node && have npm || missing "node and npm are not installed (Node.js 20 or later: Debian's nodejs and npm packages)"
  npm_ci
  # What npm start does (generate, tsc, node), step by step.
  step "generating the TypeScript code with buf and protoc-gen-es (Go builds buf the first time: about a minute)"
  (cd $ts && npm run --silent generate)
  step "compiling it with tsc (strict)"
  (cd $ts && npx --no-install tsc)
  step "running the client against $addr"
  (cd $ts && node dist/client.js --addr "$addr")
  ;;
python)
  py=$(python_with_grpc) || missing "no python3 can import grpc and grpc_tools: run make example-deps as root (apt-get install python3-grpcio python3-grpc-tools), or set PYTHON to one that can"
  step "generating the Python code with grpc_tools ($py)"
  make -s protodeps
  gen=examples/python/gen
  rm -rf "$gen" && mkdir -p "$gen"
  # google/protobuf/*.proto come with grpc_tools (or the system's protobuf
  # includes); buf/validate/validate.proto from make protodeps.
  wkt=$("$py" -c 'import os, grpc_tools; p = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"); print(p if os.path.isdir(p) else "/usr/include")')
  "$py" -m grpc_tools.protoc -I proto -I tools/protodeps/protovalidate -I "$wkt" \
    --python_out="$gen" --grpc_python_out="$gen" \
    proto/stage3/v1/stage3.proto proto/stage4/v1/stage4.proto tools/protodeps/protovalidate/buf/validate/validate.proto
  "$py" examples/python/client.py --addr "$addr"
  ;;
status)
  # What the tests of cmd/stage4 will do with each example: go test shows
  # a skipped test only with -v, so make test prints this first.
  if have node && have npm; then
    echo "examples: typescript runs (node $(node --version))"
  else
    echo "examples: typescript is SKIPPED (fails under CI=true): node and npm are not installed"
  fi
  if py=$(python_with_grpc); then
    echo "examples: python runs ($py)"
  else
    echo "examples: python is SKIPPED (fails under CI=true): no python3 with grpcio and grpc_tools; make example-deps installs them"
  fi
  ;;
deps)
  if ! python_with_grpc >/dev/null; then
    if [ "$(id -u)" = 0 ] && have apt-get; then
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-grpcio python3-grpc-tools
    else
      echo "examples.sh: install python3-grpcio and python3-grpc-tools (Debian) as root, or grpcio and grpcio-tools for your python3" >&2
      exit 1
    fi
  fi
  if have npm; then
    npm_ci
  else
    echo "examples.sh: npm is missing: install Node.js 20 or later for the TypeScript example" >&2
    exit 1
  fi
  ;;
*)
  echo "usage: tools/examples.sh go|typescript|python [HOST:PORT] | status | deps" >&2
  exit 2
  ;;
esac
