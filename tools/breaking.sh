#!/usr/bin/env bash
# Runs buf breaking on proto/ (working tree, uncommitted changes included)
# against the contract that clients may already depend on:
#
#  1. the last release tag (v*), when there is one: what clients have. This
#     is the real guard, and it holds on main and in CI alike. Until the
#     first release, changes are still free to make, and the next two only
#     keep a branch honest.
#  2. otherwise the merge base with main (origin/main, else main), when it
#     is not HEAD itself: on a branch, every change of the branch is checked
#     at once, so a breaking commit followed by any other still fails.
#  3. otherwise HEAD (uncommitted proto changes) or HEAD~1. On main, and so
#     in CI, which runs on a fresh clone of main, the merge base with main
#     is HEAD: comparing with it would check nothing, so the last commit is
#     checked instead, which is what this script did before release tags.
#
# It skips, saying so, only when none of these has a proto/ folder (a first
# commit, or a shallow clone without HEAD~1).
set -euo pipefail
top=$(git rev-parse --show-toplevel)
cd "$top"

proto_dirty() {
  ! git diff --quiet HEAD -- proto buf.yaml 2>/dev/null || [ -n "$(git ls-files --others --exclude-standard proto)" ]
}

against="" why=""
if tag=$(git describe --tags --match 'v*' --abbrev=0 2>/dev/null); then
  against=$tag why="the last release tag"
else
  base=""
  for main in origin/main main; do
    if git rev-parse --verify --quiet "$main^{commit}" >/dev/null; then
      base=$(git merge-base HEAD "$main" 2>/dev/null || true)
      [ -n "$base" ] && break
    fi
  done
  if [ -n "$base" ] && [ "$base" != "$(git rev-parse HEAD)" ]; then
    against=$base why="the merge base with $main (no release tag yet)"
  elif proto_dirty; then
    against=HEAD why="HEAD: uncommitted proto changes on main (no release tag yet)"
  else
    against=HEAD~1 why="the previous commit, on main (no release tag yet)"
  fi
fi

if ! git rev-parse --verify --quiet "$against^{commit}" >/dev/null || ! git cat-file -e "$against:proto" 2>/dev/null; then
  echo "buf breaking: no contract at $against ($why); skipped"
  exit 0
fi
if [ ! -d tools/protodeps/protovalidate ]; then
  echo "buf breaking: tools/protodeps/protovalidate is missing: run make protodeps (make lint does)" >&2
  exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
git archive "$against" proto buf.yaml | tar -x -C "$tmp"
mkdir -p "$tmp/tools/protodeps"
cp -R tools/protodeps/protovalidate "$tmp/tools/protodeps/"
echo "buf breaking against $(git rev-parse --short "$against^{commit}"), $why"
# Module against module: the protovalidate module is not ours to check.
go tool -modfile=tools/go.mod buf breaking proto --against "$tmp/proto"
