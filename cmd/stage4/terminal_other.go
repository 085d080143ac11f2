//go:build !unix

package main

// takeTerminal does nothing where process groups do not exist.
func takeTerminal() (restore func()) { return func() {} }
