// Package fsutil holds what the two local audit stores (audit/filestore,
// one file, and audit/segstore, a directory of segments) do with files
// beside their records in the same way: atomic replacement, the
// fingerprint key file, the head file and the checkpoint file.
package fsutil
