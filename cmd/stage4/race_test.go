//go:build race

package main

// Under go test -race, build the binary with the race detector as well, so
// that the end-to-end tests check the server's own concurrency.
func init() { buildFlags = append(buildFlags, "-race") }
