//go:build unix

package main

import (
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/sys/unix"
)

// takeTerminal makes this process the terminal's foreground process group,
// when stdin is a terminal, and returns what gives the terminal back. Under
// `make run`, Ctrl-C then reaches stage4 alone, which shuts down and exits
// 0; otherwise make would get the SIGINT too, and GNU make always ends
// with status 130 after an interrupt, whatever its recipe returned.
func takeTerminal() (restore func()) {
	fd := int(os.Stdin.Fd())
	old, err := unix.IoctlGetInt(fd, unix.TIOCGPGRP)
	if err != nil {
		return func() {} // not a terminal
	}
	if err := syscall.Setpgid(0, 0); err != nil {
		return func() {}
	}
	// A background group may not change the terminal's foreground group
	// unless it ignores SIGTTOU.
	signal.Ignore(syscall.SIGTTOU)
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPGRP, syscall.Getpgrp()); err != nil {
		return func() {}
	}
	return func() { _ = unix.IoctlSetPointerInt(fd, unix.TIOCSPGRP, old) }
}
