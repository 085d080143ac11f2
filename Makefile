# Stage-4 build, test and code generation. Every tool is a Go tool pinned in
# go.mod or tools/go.mod, so a fresh machine needs only Go.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

BUF := go tool -modfile=tools/go.mod buf
# protovalidate's validate.proto comes from this Go module (the Buf Schema
# Registry is unreachable); keep it in step with buf.build/go/protovalidate.
PROTOVALIDATE_MODULE := github.com/bufbuild/protovalidate@v1.2.2
PROTODEPS := tools/protodeps/protovalidate

.PHONY: help
help: ## Show this help.
	@grep -hE '^[a-z][a-z-]*:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-20s %s\n", $$1, $$2}'

# Flags for stage4 dev under make run, for example a log of this run's own:
# make run DEV_FLAGS="--audit-log $(mktemp -d)/audit".
DEV_FLAGS ?=

.PHONY: run
run: build ## Run Stage-4 with a local reference Stage-3 and audit log on loopback (DEV_FLAGS="--audit-log DIR ...").
	@# The banner's grpcurl commands use go tool, which builds grpcurl on
	@# first use; -n builds and caches it now, so that they answer at once.
	@echo "Building grpcurl into the Go build cache (about a minute the first time)..."
	go tool -modfile=tools/go.mod -n grpcurl >/dev/null
	@# exec, not go run: go run exits 1 when stage4 stops on Ctrl-C. stage4
	@# dev takes the terminal's foreground, so that Ctrl-C reaches it alone
	@# and make, which would exit 130 after an interrupt, sees status 0.
	exec bin/stage4 dev $(DEV_FLAGS)

.PHONY: build
build: ## Build bin/stage4 (stamped with its git revision: bin/stage4 version).
	@# -buildvcs=auto overrides a GOFLAGS=-buildvcs=false from the
	@# environment; it stamps in a git checkout and stays quiet elsewhere.
	go build -buildvcs=auto -o bin/stage4 ./cmd/stage4

.PHONY: image
image: ## Build the container image without Docker or a base image: OCI layout bin/image, docker load tarball bin/stage4-image.tar.
	@# The commit's time as the image's, so that one commit gives one digest.
	SOURCE_DATE_EPOCH=$$(git log -1 --format=%ct 2>/dev/null || echo 0) \
	  go run ./cmd/stage4image --revision "$$(git rev-parse HEAD 2>/dev/null || true)" \
	  --out bin/image --tar bin/stage4-image.tar

# gotestsum runs go test and prints its usual output, then every skipped
# test with the reason it gave, and every failure again, at the end.
GOTESTSUM := go tool -modfile=tools/go.mod gotestsum

.PHONY: test
test: lint checkgenerate ## Run every check: lint, generated-code check, tests with -race; ends with the skipped tests and why.
	tools/examples.sh status
	$(GOTESTSUM) --format standard-quiet -- -race -count=1 ./...

# Where the example clients call: make run's address by default.
ADDR ?= 127.0.0.1:50051

.PHONY: example-go
example-go: ## Run the Go client of examples/ against make run (ADDR=host:port).
	tools/examples.sh go $(ADDR)

.PHONY: example-typescript
example-typescript: ## Run the TypeScript client of examples/ against make run (ADDR=host:port).
	tools/examples.sh typescript $(ADDR)

.PHONY: example-python
example-python: ## Run the Python client of examples/ against make run (ADDR=host:port).
	tools/examples.sh python $(ADDR)

.PHONY: example-deps
example-deps: ## Install what the TypeScript and Python examples need (npm ci; apt-get as root).
	tools/examples.sh deps

# Where make bench writes its results; make bench-publish reads them.
OUT ?= bench-out

.PHONY: bench
bench: ## Run the micro-benchmarks and the load comparison into OUT=dir (default bench-out).
	tools/bench.sh --out $(OUT)

.PHONY: bench-scale
bench-scale: ## Start-up and lookup times of the file store at 1M/10M events and 1/10 GiB (tools/scale.sh, ~15 min, ~25 GiB of disk) into OUT=dir.
	tools/scale.sh --out $(OUT)

.PHONY: bench-publish
bench-publish: ## Make the run in OUT=dir docs/PERFORMANCE.md (keeping its hand-written notes).
	tools/bench.sh --publish $(OUT)

.PHONY: lint
lint: protodeps ## go vet, buf lint, buf format and buf breaking.
	go vet ./...
	$(BUF) lint
	$(BUF) format --diff --exit-code
	tools/breaking.sh

.PHONY: generate
generate: protodeps ## Regenerate gen/ from proto/.
	$(BUF) generate

.PHONY: checkgenerate
checkgenerate: protodeps ## Fail when gen/ is not what proto/ generates.
	tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(BUF) generate --output "$$tmp"; \
	diff -r gen "$$tmp/gen" || { echo "gen/ is stale: run make generate" >&2; exit 1; }

.PHONY: protodeps
protodeps: $(PROTODEPS)/buf/validate/validate.proto ## Copy buf/validate/validate.proto from the Go module cache into tools/protodeps.

$(PROTODEPS)/buf/validate/validate.proto:
	dir=$$(go mod download -json $(PROTOVALIDATE_MODULE) | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$$/\1/p'); \
	rm -rf $(PROTODEPS); mkdir -p $(PROTODEPS); \
	cp -R "$$dir/proto/protovalidate/." $(PROTODEPS)/; chmod -R u+w $(PROTODEPS)
