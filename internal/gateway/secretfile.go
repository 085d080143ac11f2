package gateway

import (
	"fmt"
	"os"
)

// checkSecretFile refuses a key file (flag names it) that anyone but its
// owner may change, or that others may read: whoever reads a key can sign
// checkpoints of a forged log or confirm guessed tokens. One group may read
// it when root owns it, which is how a platform hands a secret to an
// unprivileged process: the kubelet mounts a Secret under fsGroup as
// root:fsGroup with mode 0440, and PostgreSQL accepts its server key on the
// same terms (0640 owned by root).
func checkSecretFile(flag, path string, fi os.FileInfo) error {
	perm := fi.Mode().Perm()
	refused := os.FileMode(0o077)
	if ownedByRoot(fi) {
		refused = 0o037
	}
	if perm&refused != 0 {
		return fmt.Errorf("%w: %s %s has mode %04o: the key is a secret, readable by its owner only (chmod 600 %s), "+
			"or owned by root and readable by one group only (0640 or 0440, as a Kubernetes Secret under fsGroup)",
			ErrConfig, flag, path, perm, path)
	}
	return nil
}
