// Package fsutil holds what the local audit store (audit/segstore) does
// with the files beside its records: atomic replacement, the fingerprint
// key file, the head file and the checkpoint file, its permanent failure
// and its lock.
package fsutil
