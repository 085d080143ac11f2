//go:build !unix

package gateway

import "os"

// ownedByRoot is false where files have no Unix owner: only the owner-only
// modes are accepted there.
func ownedByRoot(os.FileInfo) bool { return false }
