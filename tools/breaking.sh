#!/usr/bin/env bash
# Runs buf breaking against the previous state of the contract: HEAD when
# proto/ has uncommitted changes, otherwise HEAD's parent (so CI on a clean
# clone checks the last commit). Skips when there is no such commit.
set -euo pipefail
top=$(git rev-parse --show-toplevel)
cd "$top"
if git diff --quiet HEAD -- proto buf.yaml 2>/dev/null && [ -z "$(git ls-files --others --exclude-standard proto)" ]; then
  against=HEAD~1
else
  against=HEAD
fi
if ! git rev-parse --verify --quiet "$against^{commit}" >/dev/null || ! git cat-file -e "$against:proto" 2>/dev/null; then
  echo "buf breaking: no previous contract at $against; skipped"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
git archive "$against" proto buf.yaml | tar -x -C "$tmp"
mkdir -p "$tmp/tools/protodeps"
cp -R tools/protodeps/protovalidate "$tmp/tools/protodeps/"
echo "buf breaking against $against"
# Module against module: the protovalidate module is not ours to check.
go tool -modfile=tools/go.mod buf breaking proto --against "$tmp/proto"
